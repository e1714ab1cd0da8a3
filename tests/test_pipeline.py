"""Data pipeline: reader, ids, sharding, transforms, mixtures and errors."""
import dataclasses
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import dataset as dp
from data_pipeline import frame_transforms as ft
from data_pipeline import reader
from data_pipeline import registry
from data_pipeline import schema
from data_pipeline import statistics
from data_pipeline import traj_transforms as tt
from tests.conftest import TOY_EPISODES_PER_SHARD, TOY_SHARDS


def _episodes(ds):
  return {t["episode_id"][0].numpy().decode(): t for t in ds}


# --- reading real and generated RLDS --------------------------------------------------------

def test_bridge_fixture_reads_and_standardizes(bridge_dir):
  trajs = list(reader.read_trajectories(bridge_dir, "bridge", "train"))
  assert len(trajs) == 25
  for traj in trajs:
    steps = traj["is_first"].shape[0]
    assert traj["action"].shape == (steps, 7) and traj["action"].dtype == tf.float32
    assert traj["observation"]["proprio"].shape == (steps, 7)
    assert traj["is_first"].numpy().tolist() == [True] + [False] * (steps - 1)
    # The Octo debug copy keeps the first 10 steps of each episode, so no step is the last.
    assert not traj["is_last"].numpy()[:-1].any()
    assert traj["language_instruction"][0].numpy()  # non-empty instruction
    image = tf.io.decode_jpeg(traj["observation"]["image_primary"][0])
    assert image.shape[-1] == 3 and image.shape[0] > 0
  ids = [t["episode_id"][0].numpy() for t in trajs]
  assert len(set(ids)) == 25 and all(i.startswith(b"bridge|") for i in ids)


def test_episode_ids_stable_across_shuffle_seeds(toy_dataset):
  orders = []
  contents = []
  for seed in (None, 1, 2, 3):
    episodes = _episodes(reader.read_trajectories(toy_dataset, shuffle_seed=seed))
    orders.append(list(episodes))
    contents.append({k: v["observation"]["proprio"].numpy().tolist() for k, v in episodes.items()})
  assert len(orders[0]) == TOY_SHARDS * TOY_EPISODES_PER_SHARD
  assert all(c == contents[0] for c in contents)  # same id -> same episode, whatever the seed
  assert len({tuple(o) for o in orders}) > 1  # the seeds really changed the read order


@pytest.mark.parametrize("process_count", [2, 3, 5])
def test_process_shards_disjoint_and_cover(toy_dataset, process_count):
  everything = set(_episodes(reader.read_trajectories(toy_dataset)))
  shares = [set(_episodes(reader.read_trajectories(
      toy_dataset, process_index=i, process_count=process_count, shuffle_seed=i)))
            for i in range(process_count)]
  assert sum(len(s) for s in shares) == len(everything)  # disjoint
  assert set().union(*shares) == everything               # covering


def test_bridge_single_file_shards_across_processes(bridge_dir):
  shares = [set(_episodes(reader.read_trajectories(bridge_dir, process_index=i,
                                                   process_count=2))) for i in range(2)]
  assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 25


# --- trajectory transforms on hand-computed cases -------------------------------------------

def _traj(num_steps):
  t = tf.range(num_steps)
  return {"observation": {"x": t}, "action": tf.cast(t[:, None], tf.float32),
          "is_first": tf.equal(t, 0), "episode_id": tf.fill([num_steps], "ep")}


def test_windows_hand_computed():
  out = tt.windows(_traj(6), size=3, shift=2)
  np.testing.assert_array_equal(out["observation"]["x"], [[0, 1, 2], [2, 3, 4], [4, 5, 5]])
  np.testing.assert_array_equal(out["pad_mask"], [[1, 1, 1], [1, 1, 1], [1, 1, 0]])
  out = tt.windows(_traj(5), size=3, shift=2)
  np.testing.assert_array_equal(out["observation"]["x"], [[0, 1, 2], [2, 3, 4]])
  assert out["pad_mask"].numpy().all()
  out = tt.windows(_traj(2), size=3)
  np.testing.assert_array_equal(out["observation"]["x"], [[0, 1, 1]])
  np.testing.assert_array_equal(out["pad_mask"], [[1, 1, 0]])
  out = tt.windows(_traj(7), size=3)  # non-overlapping
  np.testing.assert_array_equal(out["observation"]["x"], [[0, 1, 2], [3, 4, 5], [6, 6, 6]])
  np.testing.assert_array_equal(out["pad_mask"], [[1, 1, 1], [1, 1, 1], [1, 0, 0]])


def test_action_chunks_hand_computed():
  out = tt.action_chunks(_traj(3), horizon=2)
  np.testing.assert_array_equal(out["action"][..., 0], [[0, 1], [1, 2], [2, 2]])
  np.testing.assert_array_equal(out["action_pad_mask"], [[1, 1], [1, 1], [1, 0]])
  with pytest.raises(KeyError, match="action-free"):
    tt.action_chunks({"is_first": tf.constant([True])}, 2)


def test_frame_pairs_hand_computed():
  out = tt.frame_pairs(_traj(5), k=2)
  np.testing.assert_array_equal(out["observation"]["x"], [0, 1, 2])
  np.testing.assert_array_equal(out["next_observation"]["x"], [2, 3, 4])
  np.testing.assert_array_equal(out["action"][:, 0], [0, 1, 2])
  assert tt.frame_pairs(_traj(2), k=2)["observation"]["x"].shape[0] == 0


def test_label_join_by_episode_id(toy_dataset):
  episodes = _episodes(reader.read_trajectories(toy_dataset))
  ids = sorted(episodes)
  # Latent-action-like labels: 2 fewer than the frames, value = 10 * frame + 1.
  labels = {i: (10 * np.arange(len(episodes[i]["is_first"]) - 2) + 1)[:, None].astype(np.float32)
            for i in ids[:-1]}
  table = tt.EpisodeLabels(labels)
  for episode_id in ids[:-1]:
    joined = table.join(episodes[episode_id], "z")
    steps = len(episodes[episode_id]["is_first"])
    np.testing.assert_array_equal(joined["z_mask"], np.arange(steps) < steps - 2)
    np.testing.assert_array_equal(joined["z"][:steps - 2], labels[episode_id])
    assert not joined["z"][steps - 2:].numpy().any()
  with pytest.raises(tf.errors.InvalidArgumentError, match="no labels for episode"):
    table.join(episodes[ids[-1]], "z")
  # In a pipeline, unlabeled episodes can be dropped instead.
  pipe = dp.make_dataset([dp.DatasetSpec(toy_dataset)], batch_size=1, repeat=False,
                         shuffle_buffer=0, labels={"z": table}, drop_unlabeled=True)
  seen = {b["episode_id"][0].decode() for b in pipe.as_numpy_iterator()}
  assert seen == set(ids[:-1])


def test_label_chunks_hand_computed():
  traj = {"is_first": tf.constant([True, False, False, False]),
          "z": tf.constant([[1.0], [2.0], [3.0], [0.0]]),
          "z_mask": tf.constant([True, True, True, False])}  # labels cover 3 of 4 frames
  out = tt.label_chunks(traj, "z", horizon=2)
  np.testing.assert_array_equal(out["z"][..., 0], [[1, 2], [2, 3], [3, 0], [0, 0]])
  np.testing.assert_array_equal(out["z_mask"], [[1, 1], [1, 1], [1, 0], [0, 0]])
  with pytest.raises(KeyError, match="join the label first"):
    tt.label_chunks({"is_first": traj["is_first"]}, "z", 2)


def test_episode_subset_and_chunked_labels_in_pipeline(toy_dataset):
  ids = dp.list_episode_ids(dp.DatasetSpec(toy_dataset))
  assert len(ids) == TOY_SHARDS * TOY_EPISODES_PER_SHARD and ids == sorted(ids)
  subset = ids[:3]
  episodes = _episodes(reader.read_trajectories(toy_dataset))
  labels = tt.EpisodeLabels({i: np.arange(len(episodes[i]["is_first"]), dtype=np.float32)[:, None]
                             for i in ids})
  pipe = dp.make_dataset(
      [dp.DatasetSpec(toy_dataset)], batch_size=1, repeat=False, shuffle_buffer=0,
      labels={"z": labels}, episode_ids=subset,
      transforms=dp.TransformConfig(action_horizon=3, chunk_labels=("z",)))
  batches = list(pipe.as_numpy_iterator())
  assert {b["episode_id"][0].decode() for b in batches} == set(subset)
  assert len(batches) == sum(len(episodes[i]["is_first"]) for i in subset)
  for b in batches:
    t, steps = b["frame_index"][0], len(episodes[b["episode_id"][0].decode()]["is_first"])
    expected_mask = t + np.arange(3) < steps
    np.testing.assert_array_equal(b["z_mask"][0], expected_mask)
    np.testing.assert_array_equal(b["z"][0, :, 0], np.minimum(t + np.arange(3), steps - 1))
    np.testing.assert_array_equal(b["action_pad_mask"][0], expected_mask)


@pytest.mark.parametrize("cache", ["encoded", "decoded"])
def test_cached_pipeline_repeats_the_subset_and_first_epoch_is_the_uncached_one(toy_dataset, cache):
  """cache="encoded" / "decoded": the first pass is exactly the uncached pipeline's; later epochs
  (served from memory) hold the same frames of the episode subset again, each frame once per
  epoch."""
  ids = dp.list_episode_ids(dp.DatasetSpec(toy_dataset))
  subset = ids[1:4]
  episodes = _episodes(reader.read_trajectories(toy_dataset))
  frames = sum(len(episodes[i]["is_first"]) for i in subset)

  def batches(cache, repeat, n=None):
    pipe = dp.make_dataset([dp.DatasetSpec(toy_dataset)], batch_size=1, repeat=repeat,
                           shuffle_buffer=0, episode_ids=subset, cache=cache, seed=3)
    it = pipe.as_numpy_iterator()
    return [next(it) for _ in range(n)] if n else list(it)

  plain = batches(cache=None, repeat=False)
  cached = batches(cache=cache, repeat=True, n=3 * frames)
  assert len(plain) == frames
  for x, y in zip(plain, cached[:frames]):
    np.testing.assert_array_equal(x["observation"]["image_primary"],
                                  y["observation"]["image_primary"])
    assert x["episode_id"][0] == y["episode_id"][0] and x["frame_index"][0] == y["frame_index"][0]
  key = lambda b: (b["episode_id"][0], int(b["frame_index"][0]))  # noqa: E731
  for epoch in range(3):
    assert sorted(map(key, cached[epoch * frames:(epoch + 1) * frames])) == sorted(map(key, plain))


# --- frame transforms -----------------------------------------------------------------------

def _encoded_frames(num, size=24, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 255, (num, size, size, 3), dtype=np.uint8)
  return tf.stack([tf.io.encode_jpeg(im) for im in images])


def test_frame_transforms_identical_eagerly_and_in_tf_data():
  element = {"observation": {"image_primary": _encoded_frames(2),
                             "image_wrist": _encoded_frames(2, seed=1)},
             "next_observation": {"image_primary": _encoded_frames(2, seed=2)}}
  seed = tf.constant([7, 11], tf.int64)
  config = ft.AugmentConfig()
  eager = ft.apply_frame_transforms(element, (16, 20), config, seed)
  ds = tf.data.Dataset.from_tensors((element, seed)).map(
      lambda e, s: ft.apply_frame_transforms(e, (16, 20), config, s))
  graph = next(iter(ds))
  for key, value in schema.flatten_keys(eager).items():
    assert value.shape == (2, 16, 20, 3) and value.dtype == tf.uint8
    np.testing.assert_array_equal(value.numpy(), schema.flatten_keys(graph)[key].numpy())


def test_augmentation_shared_across_cameras_and_seeded():
  frames = _encoded_frames(1)
  element = {"observation": {"image_primary": frames, "image_wrist": frames}}
  a = ft.apply_frame_transforms(element, (24, 24), ft.AugmentConfig(), tf.constant([1, 2]))
  np.testing.assert_array_equal(a["observation"]["image_primary"], a["observation"]["image_wrist"])
  plain = ft.apply_frame_transforms(element, (24, 24))["observation"]["image_primary"]
  b = ft.apply_frame_transforms(element, (24, 24), ft.AugmentConfig(), tf.constant([3, 4]))
  assert not np.array_equal(a["observation"]["image_primary"], plain)
  assert not np.array_equal(a["observation"]["image_primary"], b["observation"]["image_primary"])


def test_decode_resize_keeps_content():
  image = np.zeros((32, 32, 3), np.uint8)
  image[:, 16:] = 200
  decoded = ft.decode_images(tf.io.encode_png(image)[None], (16, 16)).numpy()[0]
  assert decoded.shape == (16, 16, 3)
  assert decoded[:, :7].max() < 10 and decoded[:, 9:].min() > 190


# --- the assembled pipeline -----------------------------------------------------------------

def _pipeline(toy_dataset, seed, **kwargs):
  transforms = dp.TransformConfig(frame_pair_k=2, resize=(16, 16), augment=ft.AugmentConfig())
  return dp.make_dataset([dp.DatasetSpec(toy_dataset)], batch_size=4, transforms=transforms,
                         shuffle_buffer=16, seed=seed, **kwargs)


def _take(pipe, n):
  it = pipe.as_numpy_iterator()
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("process_count", [2, 3])
def test_global_order_gives_each_process_its_rows_of_the_one_process_batches(toy_dataset,
                                                                             process_count):
  """With global_order the P processes' batches, stacked, are the batches one process reads
  with the global batch size (augmentation included): batches independent of the process
  count. Without it each process reads other episodes."""
  one = _take(dp.make_dataset(
      [dp.DatasetSpec(toy_dataset)], batch_size=4 * process_count, shuffle_buffer=16, seed=3,
      transforms=dp.TransformConfig(frame_pair_k=2, resize=(16, 16),
                                    augment=ft.AugmentConfig())), 3)
  shares = [_take(_pipeline(toy_dataset, 3, process_index=i, process_count=process_count,
                            global_order=True), 3) for i in range(process_count)]
  flat = schema.flatten_keys
  for step, batch in enumerate(one):
    for key, value in flat(batch).items():
      rows = np.concatenate([flat(share[step])[key] for share in shares])
      np.testing.assert_array_equal(rows, value, err_msg=f"step {step} {key}")
  own = _take(_pipeline(toy_dataset, 3, process_index=0, process_count=process_count), 3)
  assert any(not np.array_equal(a["observation"]["proprio"], b["observation"]["proprio"])
             for a, b in zip(own, shares[0]))
  with pytest.raises(ValueError, match="drop_remainder"):
    _pipeline(toy_dataset, 3, process_index=0, process_count=2, global_order=True,
              drop_remainder=False)


def test_pipeline_deterministic_under_seed_and_fixed_shapes(toy_dataset):
  a, b, c = (_take(_pipeline(toy_dataset, s), 6) for s in (0, 0, 1))
  for x, y in zip(a, b):
    for key in x:
      if isinstance(x[key], dict):
        continue
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["episode_id"], y["episode_id"]) for x, y in zip(a, c))
  for batch in a:
    assert batch["observation"]["image_primary"].shape == (4, 16, 16, 3)
    assert batch["next_observation"]["image_primary"].shape == (4, 16, 16, 3)


def test_autotune_off_from_argument_or_environment_leaves_the_batches_unchanged(
    toy_dataset, monkeypatch):
  monkeypatch.delenv(dp.AUTOTUNE_ENV, raising=False)
  assert _pipeline(toy_dataset, 0).dataset.options().autotune.enabled
  off = _pipeline(toy_dataset, 0, autotune=False)
  assert not off.dataset.options().autotune.enabled
  monkeypatch.setenv(dp.AUTOTUNE_ENV, "0")
  assert not _pipeline(toy_dataset, 0).dataset.options().autotune.enabled
  assert _pipeline(toy_dataset, 0, autotune=True).dataset.options().autotune.enabled
  # A worker's environment (hilam_jax.jobs.single_thread_env) turns it off.
  from hilam_jax import jobs  # pylint: disable=g-import-not-at-top
  assert jobs.single_thread_env()[dp.AUTOTUNE_ENV] == "0"
  monkeypatch.delenv(dp.AUTOTUNE_ENV)
  for x, y in zip(_take(off, 6), _take(_pipeline(toy_dataset, 0), 6)):
    np.testing.assert_array_equal(x["episode_id"], y["episode_id"])
    np.testing.assert_array_equal(x["observation"]["image_primary"],
                                  y["observation"]["image_primary"])


def test_frame_pairs_are_k_apart_after_decoding(toy_dataset):
  pipe = dp.make_dataset([dp.DatasetSpec(toy_dataset)], batch_size=8, repeat=False,
                         shuffle_buffer=0,
                         transforms=dp.TransformConfig(frame_pair_k=2, resize=(16, 16)))
  for batch in pipe.as_numpy_iterator():
    now = batch["observation"]["image_primary"].astype(float).mean(axis=(1, 2, 3))
    later = batch["next_observation"]["image_primary"].astype(float).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(later - now, 16, atol=3)  # intensity 8 per frame, k = 2
    np.testing.assert_array_equal(batch["next_observation"]["proprio"][:, 0],
                                  batch["frame_index"] + 2)


def test_mixture_follows_weights(toy_dataset):
  pipe = dp.make_dataset(
      [dp.DatasetSpec(toy_dataset, split="train", weight=3.0),
       dp.DatasetSpec(toy_dataset, split="val", weight=1.0)],
      batch_size=50, shuffle_buffer=0, transforms=dp.TransformConfig(resize=(16, 16)))
  ids = np.concatenate([b["episode_id"] for b in _take(pipe, 8)])
  frac_train = np.mean([b"-train." in i for i in ids])
  assert 0.65 < frac_train < 0.85


def test_mixture_with_different_keys_is_refused(toy_dataset, bridge_dir):
  with pytest.raises(ValueError, match="cannot mix"):
    dp.make_dataset([dp.DatasetSpec(toy_dataset), dp.DatasetSpec(bridge_dir, "bridge")],
                    batch_size=2)


# --- clear errors on bad input --------------------------------------------------------------

def test_missing_directory_error(tmp_path):
  with pytest.raises(schema.DatasetNotFoundError, match="does not exist"):
    reader.read_trajectories(str(tmp_path / "nope" / "1.0.0"))
  with pytest.raises(schema.DatasetNotFoundError, match="dataset_info.json"):
    reader.read_trajectories(str(tmp_path))


def test_unknown_dataset_name_error(toy_dataset):
  with pytest.raises(schema.UnknownDatasetError, match="unknown dataset name 'no_such_set'"):
    reader.read_trajectories(toy_dataset, name="no_such_set")
  assert "bridge" in registry.registered_names()


def test_missing_required_key_names_key_and_dataset(toy_dataset):
  # The toy dataset lacks Bridge's camera key: reading it as Bridge must say so.
  with pytest.raises(schema.MissingKeyError) as err:
    reader.read_trajectories(toy_dataset, name="bridge")
  assert "steps/observation/image_0" in str(err.value) and "'bridge'" in str(err.value)


def _corrupt_copy(toy_dataset, tmp_path):
  copy = str(tmp_path / "corrupt")
  shutil.copytree(toy_dataset, copy)
  victim = sorted(f for f in os.listdir(copy) if "-train." in f)[1]
  path = os.path.join(copy, victim)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))
  return copy, victim


def test_corrupted_record_names_the_file(toy_dataset, tmp_path):
  copy, victim = _corrupt_copy(toy_dataset, tmp_path)
  pipe = dp.make_dataset([dp.DatasetSpec(copy)], batch_size=1, repeat=False, shuffle_buffer=0)
  with pytest.raises(schema.CorruptedRecordError, match=victim):
    for _ in pipe.as_numpy_iterator():
      pass


def test_corrupted_record_skip_and_count(toy_dataset, tmp_path):
  copy, _ = _corrupt_copy(toy_dataset, tmp_path)
  trajs = reader.read_trajectories(copy, skip_corrupted=True)
  num_read = sum(1 for _ in trajs)
  assert trajs.num_skipped_records > 0
  assert num_read + trajs.num_skipped_records == TOY_SHARDS * TOY_EPISODES_PER_SHARD


def _emptied_shard_copy(toy_dataset, tmp_path, victim_index=1):
  """A copy of the toy dataset whose train shard `victim_index` is truncated to 0 bytes on disk
  (dataset_info.json still records its episodes)."""
  copy = str(tmp_path / "empty_shard")
  shutil.copytree(toy_dataset, copy)
  victim = sorted(f for f in os.listdir(copy) if "-train." in f)[victim_index]
  os.truncate(os.path.join(copy, victim), 0)
  return copy, victim


def test_empty_shard_is_an_error_naming_the_file_and_counts(toy_dataset, tmp_path):
  copy, victim = _emptied_shard_copy(toy_dataset, tmp_path)
  with pytest.raises(schema.CorruptedRecordError) as err:
    for _ in reader.read_trajectories(copy):
      pass
  message = str(err.value)
  assert victim in message, message
  assert f"says {TOY_EPISODES_PER_SHARD} records, the file holds 0" in message, message
  # The training pipeline too (it reads through read_trajectories).
  with pytest.raises(schema.CorruptedRecordError, match=victim):
    dp.make_dataset([dp.DatasetSpec(copy)], batch_size=1, repeat=False, shuffle_buffer=0)


def test_truncated_shard_is_an_error(toy_dataset, tmp_path):
  copy = str(tmp_path / "short_shard")
  shutil.copytree(toy_dataset, copy)
  victim = sorted(f for f in os.listdir(copy) if "-train." in f)[2]
  path = os.path.join(copy, victim)
  os.truncate(path, os.path.getsize(path) - 10)  # the last record cut short
  with pytest.raises(schema.CorruptedRecordError,
                     match=f"{victim}: dataset_info.json says {TOY_EPISODES_PER_SHARD} records, "
                           f"the file holds {TOY_EPISODES_PER_SHARD - 1}"):
    reader.read_trajectories(copy)


def test_empty_shard_skip_corrupted_reads_the_others_and_reports_it(toy_dataset, tmp_path):
  copy, victim = _emptied_shard_copy(toy_dataset, tmp_path)
  trajs = reader.read_trajectories(copy, skip_corrupted=True)
  ids = {t["episode_id"][0].decode() for t in trajs.as_numpy_iterator()}
  assert trajs.num_skipped_records == TOY_EPISODES_PER_SHARD
  assert len(ids) == (TOY_SHARDS - 1) * TOY_EPISODES_PER_SHARD
  assert not any(victim in i for i in ids)


def test_shard_record_count_matches_tfrecord_reader(toy_dataset):
  source = reader.get_source(toy_dataset)
  for path, num in zip(source.files, source.shard_lengths):
    assert reader.count_records(path) == num == sum(1 for _ in tf.data.TFRecordDataset(path))


def test_neutral_augmentation_is_identity_and_jitter_stays_close():
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 255, (3, 2, 16, 16, 3), dtype=np.uint8))
  neutral = ft.AugmentConfig(crop="resized", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                             brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
  out = ft.augment(images, tf.constant([5, 6]), neutral).numpy().astype(int)
  assert np.abs(out - images.numpy()).max() <= 1
  no_shift = ft.augment(images, tf.constant([5, 6]), dataclasses.replace(
      neutral, crop="shift", shift_pad=0)).numpy().astype(int)
  assert np.abs(no_shift - images.numpy()).max() <= 1
  # A shift moves the whole element (both images of a pair) by the same offset.
  shifted = ft.augment(images, tf.constant([5, 6]), dataclasses.replace(
      neutral, crop="shift", shift_pad=3)).numpy().astype(int)
  for b in range(3):
    matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
               if all(np.abs(shifted[b, i, 4:12, 4:12]
                             - images.numpy()[b, i, 4 + dy:12 + dy, 4 + dx:12 + dx]).max() <= 1
                      for i in range(2))]
    assert len(matches) == 1
  # Pure saturation 0 gives grey images (all channels equal); hue keeps the luma (Y) channel.
  grey = ft.augment(images, tf.constant([5, 6]), dataclasses.replace(
      neutral, saturation=(0.0, 0.0))).numpy().astype(int)
  assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1
  hue = ft.augment(images, tf.constant([5, 6]), dataclasses.replace(neutral, hue=0.5))
  luma = lambda x: (np.asarray(x, float) * [0.299, 0.587, 0.114]).sum(-1)
  unclipped = (hue.numpy() > 0) & (hue.numpy() < 255)
  assert np.abs(luma(hue) - luma(images))[unclipped.all(-1)].mean() < 1.0


def test_per_dimension_mean_std_pools_rows_and_skips_empty_arrays():
  rng = np.random.default_rng(6)
  a, b = rng.normal(2.0, 3.0, size=(5, 4)), rng.normal(-1.0, 0.5, size=(9, 4))
  mean, std = statistics.per_dimension_mean_std([a, np.zeros((0, 4)), b], 4)
  pooled = np.concatenate([a, b])  # pooled over frames, not a mean of per-episode means
  np.testing.assert_allclose(mean, pooled.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, pooled.std(0), rtol=1e-12)
  assert not np.allclose(mean, (a.mean(0) + b.mean(0)) / 2)
  # [T] rows of a 1-d signal are reshaped to [T, 1]; no row at all gives (0, 1).
  np.testing.assert_allclose(statistics.per_dimension_mean_std([a[:, 0]], 1)[0], a[:, :1].mean(0))
  mean, std = statistics.per_dimension_mean_std([np.zeros((0, 3))], 3)
  assert mean.tolist() == [0.0] * 3 and std.tolist() == [1.0] * 3

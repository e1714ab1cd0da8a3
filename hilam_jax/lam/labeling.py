"""Labels whole RLDS datasets with latent actions from a frozen LAM.

For every episode, z^0_t = IDM(I_t, I_{t+k}) for t in [0, T-k): T-k latents per episode (the last
k frames have no partner). Output, one shard per input shard file, under `<out_dir>`:

  <out_dir>/manifest.json                      LAM checkpoint (params sha256), k, image size,
                                               datasets, shard list, versions
  <out_dir>/<dataset>/<split>/<input file>.npz episode_ids [E] str, lengths [E] int64,
                                               latents [sum(lengths), D] float32

Work is split by input shard file: process p labels files p, p+P, p+2P, ...; a finished output
shard is written atomically and skipped on rerun, so an interrupted job resumes without
duplicates or gaps. `load_labels` reads the shards back as `EpisodeLabels` for the data pipeline
(`make_dataset(labels={"latent_action": ...})` joins them by episode id). Episodes with T <= k
have no pairs and so no labels: join with `drop_unlabeled=True` or expect them missing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from absl import logging

from data_pipeline import dataset as dp
from data_pipeline import frame_transforms as ft
from data_pipeline import reader
from data_pipeline import traj_transforms as tt
from data_pipeline import run_info
from hilam_jax.lam import interface
from hilam_jax.training import workdir_lock

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class ShardJob:
  """One output shard: the episodes of one input shard file."""
  dataset_name: str
  split: str
  source: reader.TrajectorySource     # restricted to the one input file
  out_path: str


def plan_shards(datasets: Sequence[dict], out_dir: str) -> list[ShardJob]:
  """All output shards of all datasets, in a fixed order (same on every process)."""
  jobs = []
  for spec in datasets:
    source = reader.get_source(spec["dataset_dir"], spec.get("name"), spec.get("split", "train"))
    for path, length in zip(source.files, source.shard_lengths):
      single = dataclasses.replace(source, files=[path], shard_lengths=[length])
      out_path = os.path.join(out_dir, source.name, source.split,
                              os.path.basename(path) + ".npz")
      jobs.append(ShardJob(source.name, source.split, single, out_path))
  return jobs


def _pair_batches(job: ShardJob, frame_gap: int, image_size: tuple[int, int],
                  batch_size: int) -> Iterator[dict]:
  """Batches of (frame t, frame t+k) with episode ids and frame indices, in episode order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  ds = reader.read_trajectories(job.source.dataset_dir, source=job.source)
  ds = ds.map(lambda t: tt.frame_pairs(
      {"observation": {"image_primary": t["observation"]["image_primary"]},
       "is_first": t["is_first"], "episode_id": t["episode_id"],
       "frame_index": t["frame_index"]}, frame_gap))
  ds = ds.flat_map(tf.data.Dataset.from_tensor_slices).batch(batch_size)
  ds = ds.map(lambda b: ft.apply_frame_transforms(b, image_size),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.with_options(dp.pipeline_options()).prefetch(2)
  yield from ds.as_numpy_iterator()


def label_shard(lam: interface.FrozenDynamicsModel, job: ShardJob, batch_size: int) -> dict:
  """Encodes every pair of the shard; returns {episode_id: latents [T-k, D]} in file order."""
  latents: dict[str, list[np.ndarray]] = {}
  order: list[str] = []
  for batch in _pair_batches(job, lam.frame_gap, lam.image_size, batch_size):
    frame_t = batch["observation"]["image_primary"]
    frame_tk = batch["next_observation"]["image_primary"]
    num = len(frame_t)
    if num < batch_size:  # pad the last batch: one compiled shape for the whole job
      pad = [(0, batch_size - num)] + [(0, 0)] * 3
      frame_t, frame_tk = np.pad(frame_t, pad), np.pad(frame_tk, pad)
    z = np.asarray(lam.encode(frame_t, frame_tk))[:num]
    for episode_id, index, row in zip(batch["episode_id"], batch["frame_index"], z):
      episode_id = episode_id.decode()
      if episode_id not in latents:
        latents[episode_id] = []
        order.append(episode_id)
      if index != len(latents[episode_id]):
        raise RuntimeError(f"pairs of {episode_id} out of order: frame {index} after "
                           f"{len(latents[episode_id])}")
      latents[episode_id].append(row)
  return {e: np.stack(latents[e]).astype(np.float32) for e in order}


def write_shard(path: str, labels: dict[str, np.ndarray], latent_dim: int) -> None:
  """Atomic .npz write (temporary file + rename)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ids = list(labels)
  lengths = np.array([len(labels[e]) for e in ids], np.int64)
  values = (np.concatenate([labels[e] for e in ids]) if ids
            else np.zeros((0, latent_dim), np.float32))
  tmp = path + ".tmp.npz"
  np.savez(tmp, episode_ids=np.array(ids, dtype=str), lengths=lengths, latents=values)
  os.replace(tmp, path)


def read_shard(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    ids, lengths, values = data["episode_ids"], data["lengths"], data["latents"]
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  return {str(e): values[offsets[i]:offsets[i + 1]] for i, e in enumerate(ids)}


@workdir_lock.releases_workdir_locks
def label_datasets(lam: interface.FrozenDynamicsModel, datasets: Sequence[dict], out_dir: str, *,
                   batch_size: int = 256, fingerprint: dict | None = None,
                   max_shards: int | None = None) -> dict[str, Any]:
  """Labels `datasets` (DatasetSpec dicts) into `out_dir`; resumable; returns run statistics.

  Args:
    lam: the frozen model (its frame_gap and image_size define the pairs).
    datasets: dicts with dataset_dir, optional name and split.
    out_dir: output folder (manifest + shards).
    batch_size: pairs per encode call.
    fingerprint: identifies the LAM (checkpoint path, params hash) for the manifest; a rerun
      with a different fingerprint in an existing out_dir is refused.
    max_shards: label at most this many new shards in this call (None: all).
  """
  manifest_path = os.path.join(out_dir, MANIFEST)
  identity = {"lam": fingerprint or {}, "frame_gap": lam.frame_gap,
              "image_size": list(lam.image_size), "latent_dim": lam.latent_dim,
              "datasets": [dict(d) for d in datasets]}
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      previous = json.load(f)
    if {k: previous.get(k) for k in identity} != json.loads(json.dumps(identity)):
      raise ValueError(f"{out_dir} holds labels from another LAM or dataset list; use a new "
                       "out_dir or delete it")
  workdir_lock.lock_workdir(out_dir)  # process 0: one labeling run per out_dir
  jobs = plan_shards(datasets, out_dir)
  mine = [j for i, j in enumerate(jobs) if i % jax.process_count() == jax.process_index()]
  todo = [j for j in mine if not os.path.exists(j.out_path)]
  if max_shards is not None:
    todo = todo[:max_shards]
  logging.info("labeling: %d shards in total, %d for this process, %d to do", len(jobs),
               len(mine), len(todo))
  start, pairs = time.perf_counter(), 0
  for i, job in enumerate(todo, start=1):
    labels = label_shard(lam, job, batch_size)
    write_shard(job.out_path, labels, lam.latent_dim)
    pairs += sum(len(v) for v in labels.values())
    elapsed = time.perf_counter() - start
    logging.info("shard %d/%d %s: %d episodes | %.0f pairs/s | ETA %.0fs", i, len(todo),
                 os.path.relpath(job.out_path, out_dir), len(labels), pairs / elapsed,
                 elapsed / i * (len(todo) - i))
  if jax.process_index() == 0:
    manifest = dict(identity)
    manifest["shards"] = [os.path.relpath(j.out_path, out_dir) for j in jobs]
    manifest["versions"] = run_info.package_versions()
    run_info.write_json_atomic(manifest_path, manifest)
  seconds = time.perf_counter() - start
  return {"shards_done": len(todo), "shards_total": len(jobs), "pairs": pairs,
          "seconds": seconds, "pairs_per_second": pairs / seconds if seconds else 0.0,
          "complete": all(os.path.exists(j.out_path) for j in jobs)}


def read_labels(out_dir: str, dataset_name: str | None = None) -> dict[str, np.ndarray]:
  """{episode_id: latents [T_e, latent_dim]} of every shard of `out_dir` (optionally one
  dataset's); an error naming the missing shards if the labeling job has not finished."""
  with open(os.path.join(out_dir, MANIFEST)) as f:
    manifest = json.load(f)
  labels: dict[str, np.ndarray] = {}
  missing = []
  for rel in manifest["shards"]:
    if dataset_name is not None and not rel.startswith(dataset_name + os.sep):
      continue
    path = os.path.join(out_dir, rel)
    if not os.path.exists(path):
      missing.append(rel)
      continue
    labels.update(read_shard(path))
  if missing:
    raise FileNotFoundError(f"labels in {out_dir} are incomplete, missing shards {missing}: "
                            "rerun the labeling job to finish them")
  return labels


def load_labels(out_dir: str, dataset_name: str | None = None) -> tt.EpisodeLabels:
  """All shards of `out_dir` (optionally one dataset's) as joinable EpisodeLabels."""
  return tt.EpisodeLabels(read_labels(out_dir, dataset_name))

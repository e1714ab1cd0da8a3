"""Do the latent actions carry action information? Probes and reconstruction gain on held-out data.

Measured on the pairs (t, t+k) of held-out episodes (a dataset's val split):
  * action probe: the linear probe of `hilam_jax.probing` (the one of the skill-discovery
    evaluation; unweighted classes, as the score is accuracy) fitted on z^0 to predict the true
    action (the action at t for discrete actions with k = 1; the mean of actions t..t+k-1 for
    continuous ones), against the same probe on a z-free baseline of the same dimension (PCA of
    the 8x8-pooled frame difference I_{t+k} - I_t) and against chance (majority class /
    predicting the mean). The probe is fitted on the pairs of the validation half of the episodes
    and scored on the test half (`data_pipeline.episode_split.heldout_split`).
  * reconstruction: the frozen FDM's error with z versus with z ablated (z of another pair of the
    batch), and the copy-frame-t error as a floor reference; z_gain = 1 - mse(z) / mse(ablated).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from data_pipeline import dataset as dp
from data_pipeline import episode_split
from hilam_jax import probing
from hilam_jax.lam import interface


def collect_pairs(lam: interface.FrozenDynamicsModel, dataset: dict, *, max_pairs: int,
                  batch_size: int | None = None) -> dict[str, np.ndarray]:
  """z, frame-difference features, actions, episode ids and recon errors of up to max_pairs pairs
  (in batches of `batch_size`; None: the model's `batch_size_hint`)."""
  if batch_size is None:
    batch_size = lam.batch_size_hint
  k = lam.frame_gap
  transforms = dp.TransformConfig(
      frame_pair_k=k, action_horizon=k, resize=tuple(lam.image_size),
      keys=("observation/image_primary", "next_observation/image_primary", "action",
            "episode_id"))
  pipe = dp.make_dataset([dataset], batch_size=batch_size, transforms=transforms,
                         shuffle_buffer=0, repeat=False, drop_remainder=False)
  out = {"z": [], "diff": [], "action": [], "episode_id": [], "mse": [], "mse_ablated": [],
         "mse_copy": []}
  rng = np.random.default_rng(0)
  total = 0
  for batch in pipe.as_numpy_iterator():
    frame_t = batch["observation"]["image_primary"]
    frame_tk = batch["next_observation"]["image_primary"]
    z = np.asarray(lam.encode(frame_t, frame_tk))
    shuffled = z[rng.permutation(len(z))] if len(z) > 1 else z
    out["z"].append(z)
    out["mse"].append(np.asarray(lam.reconstruction_loss(frame_t, z, frame_tk, per_sample=True)))
    out["mse_ablated"].append(np.asarray(
        lam.reconstruction_loss(frame_t, shuffled, frame_tk, per_sample=True)))
    copy = (frame_t.astype(np.float32) - frame_tk.astype(np.float32)) / 127.5
    out["mse_copy"].append(np.mean(copy ** 2, axis=(1, 2, 3)))
    out["diff"].append(_pooled_difference(frame_t, frame_tk))
    out["action"].append(batch["action"])
    out["episode_id"].append(batch["episode_id"])
    total += len(z)
    if total >= max_pairs:
      break
  return {key: np.concatenate(values)[:max_pairs] for key, values in out.items()}


def _pooled_difference(frame_t: np.ndarray, frame_tk: np.ndarray, cells: int = 8) -> np.ndarray:
  """(I_{t+k} - I_t) average-pooled to cells x cells x 3, flattened: [B, cells*cells*3]."""
  diff = frame_tk.astype(np.float32) - frame_t.astype(np.float32)
  batch, height, width, _ = diff.shape
  diff = diff[:, :height - height % cells, :width - width % cells]
  diff = diff.reshape(batch, cells, height // cells, cells, width // cells, 3).mean(axis=(2, 4))
  return diff.reshape(batch, -1) / 255.0


def _pca(train: np.ndarray, test: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
  mean = train.mean(0)
  _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
  basis = vt[:dim].T
  return (train - mean) @ basis, (test - mean) @ basis


def train_probe(x_train, y_train, x_test, y_test, *, discrete: bool,
                max_iter: int = 500) -> float:
  """Fits the linear probe (`probing.fit_linear_probe`: classes unweighted, or least squares on
  continuous targets) on the train pairs; returns the test accuracy or R^2."""
  probe = probing.fit_linear_probe(x_train, y_train, max_iter=max_iter, balanced=False,
                                   regression=not discrete)
  prediction = probing.probe_predict(probe, x_test)
  if discrete:
    return probing.probe_scores(prediction, y_test)["accuracy"]
  return probing.r_squared(y_test, prediction)


def evaluate(lam: interface.FrozenDynamicsModel, dataset: dict, *, max_pairs: int = 20_000,
             probe_steps: int = 500, pairs: dict[str, np.ndarray] | None = None
             ) -> dict[str, Any]:
  """All quality figures of a LAM on one held-out dataset split (`pairs`: the split's
  `collect_pairs` output if the caller has it already, e.g. to plot the same latents;
  `probe_steps`: the probe solver's iteration cap)."""
  if pairs is None:
    pairs = collect_pairs(lam, dataset, max_pairs=max_pairs)
  action = pairs["action"]
  discrete = np.issubdtype(action.dtype, np.integer)
  if discrete:
    if lam.frame_gap != 1:
      raise ValueError("discrete-action probes need frame_gap 1 (one action per pair)")
    target = action[:, 0].astype(np.int32)
  else:
    target = action.reshape(len(action), lam.frame_gap, -1).mean(1).astype(np.float32)
  test = episode_split.heldout_test_mask(pairs["episode_id"])
  if test.all() or not test.any():
    raise ValueError("need episodes on both sides of the probe split; use more pairs")
  z_train, z_test = pairs["z"][~test], pairs["z"][test]
  d_train, d_test = _pca(pairs["diff"][~test], pairs["diff"][test], lam.latent_dim)
  y_train, y_test = target[~test], target[test]
  num_classes = int(target.max()) + 1 if discrete else 0
  kwargs = dict(discrete=discrete, max_iter=probe_steps)
  result = {
      "pairs": int(len(target)), "probe_train_pairs": int((~test).sum()),
      "probe_test_pairs": int(test.sum()), "frame_gap": lam.frame_gap,
      "latent_dim": lam.latent_dim,
      "metric": "accuracy" if discrete else "r2",
      "probe_z": train_probe(z_train, y_train, z_test, y_test, **kwargs),
      "probe_frame_difference": train_probe(d_train, y_train, d_test, y_test, **kwargs),
  }
  if discrete:
    counts = np.bincount(y_train, minlength=num_classes)
    result["chance"] = float(np.mean(y_test == counts.argmax()))
  else:
    result["chance"] = probing.r_squared(y_test, np.broadcast_to(y_train.mean(0), y_test.shape))
  mse, ablated, copy = pairs["mse"].mean(), pairs["mse_ablated"].mean(), pairs["mse_copy"].mean()
  result.update({"recon_mse": float(mse), "recon_mse_z_ablated": float(ablated),
                 "recon_mse_copy_frame_t": float(copy), "z_gain": float(1.0 - mse / ablated),
                 "z_var_per_dim": np.var(pairs["z"], axis=0).round(5).tolist()})
  return result

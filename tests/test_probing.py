"""The shared linear probe (hilam_jax.probing), the held-out episode split's mask and the LAM's
action probe built on them (on synthetic pairs: no model is needed)."""
import types

import numpy as np

from data_pipeline import episode_split
from hilam_jax import probing
from hilam_jax.lam import probe as lam_probe


def test_regression_probe_is_ridge_regression_in_standardised_units():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5)) * [1, 2, 3, 4, 5] + 1.0
  y = x @ rng.normal(size=(5, 2)) + rng.normal(size=(200, 2))
  l2 = 0.05
  fit = probing.fit_linear_probe(x, y, l2=l2, regression=True)
  # Closed form: minimise 0.5/n ||X w + b - Y||^2 + l2 ||w||^2 on standardised X, Y.
  xs = (x - x.mean(0)) / (x.std(0) + 1e-6)
  ys = (y - y.mean(0)) / (y.std(0) + 1e-6)
  w = np.linalg.solve(xs.T @ xs / len(x) + 2 * l2 * np.eye(5), xs.T @ ys / len(x))
  np.testing.assert_allclose(fit["weights"], w, atol=1e-5)
  np.testing.assert_allclose(fit["bias"], 0.0, atol=1e-5)
  want = (xs @ w) * (y.std(0) + 1e-6) + y.mean(0)
  # The solver stops at L-BFGS's tolerance: weights to 1e-5, predictions (y's std ~10) to 1e-3.
  np.testing.assert_allclose(probing.probe_predict(fit, x), want, atol=1e-3)
  assert probing.r_squared(y, want) > 0.7  # one output has a small signal-to-noise ratio
  assert abs(probing.r_squared(y, np.broadcast_to(y.mean(0), y.shape))) < 1e-9


def test_heldout_test_mask_follows_heldout_split_for_bytes_and_str():
  ids = [f"episode_{i}" for i in range(30)]
  _, test = episode_split.heldout_split(ids)
  per_item = [ids[i % 30] for i in range(90)]
  mask = episode_split.heldout_test_mask([e.encode() for e in per_item])
  np.testing.assert_array_equal(mask, [e in test for e in per_item])
  np.testing.assert_array_equal(episode_split.heldout_test_mask(per_item), mask)


def _pairs(discrete, episodes=30, per_episode=40, dz=6):
  rng = np.random.default_rng(1)
  n = episodes * per_episode
  if discrete:
    action = rng.integers(0, 4, size=(n, 1))
    z = np.eye(4)[action[:, 0]] @ rng.normal(size=(4, dz)) + 0.3 * rng.normal(size=(n, dz))
  else:
    action = rng.normal(size=(n, 2, 3)).astype(np.float32)
    z = action.mean(1) @ rng.normal(size=(3, dz)) + 0.3 * rng.normal(size=(n, dz))
  return {"z": z.astype(np.float32), "diff": rng.normal(size=(n, 20)).astype(np.float32),
          "action": action,
          "episode_id": np.repeat([f"ep{i}".encode() for i in range(episodes)], per_episode),
          "mse": np.full(n, 0.5), "mse_ablated": np.ones(n), "mse_copy": np.full(n, 2.0)}


def test_lam_action_probe_on_synthetic_pairs():
  for discrete in (True, False):
    lam = types.SimpleNamespace(frame_gap=1 if discrete else 2, latent_dim=6)
    pairs = _pairs(discrete)
    result = lam_probe.evaluate(lam, {}, pairs=pairs)
    test = episode_split.heldout_test_mask(pairs["episode_id"])
    assert result["probe_test_pairs"] == test.sum() and result["probe_train_pairs"] == (~test).sum()
    assert result["metric"] == ("accuracy" if discrete else "r2")
    # z carries the action, the frame difference here is noise.
    assert result["probe_z"] > 0.9, result
    assert result["probe_frame_difference"] < result["chance"] + 0.1, result
    assert result["z_gain"] == 0.5

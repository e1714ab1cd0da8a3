"""Where early stopping on a validation curve stops and which step it keeps
(`metrics.early_stop_point`, used by experiments/early_stopping_study.py)."""
import pytest

from hilam_jax.training import metrics


def test_stop_point_follows_the_curve_in_order():
  stop = metrics.early_stop_point
  accuracy = [(250, 0.85), (500, 0.90), (750, 0.89), (1000, 0.87), (1250, 0.88), (1500, 0.86),
              (1750, 0.91), (2000, 0.88)]
  # Patience 1000: 500 is the best until 1500, which is 1000 steps later: stop there, keep 500
  # (the later 0.91 at 1750 is never seen).
  assert stop(accuracy, higher_is_better=True, patience=1000) == (1500, 500)
  # More patience reaches the later best; at the curve's end training stops anyway.
  assert stop(accuracy, higher_is_better=True, patience=1500) == (2000, 1750)
  loss = [(s, -a) for s, a in accuracy]
  assert stop(loss, higher_is_better=False, patience=1000) == (1500, 500)
  # Ties do not move the best; patience 0 stops at the first point without a new best.
  assert stop([(1, 1.0), (2, 1.0), (3, 2.0)], higher_is_better=True, patience=1) == (2, 1)
  assert stop([(1, 1.0), (2, 2.0), (3, 3.0)], higher_is_better=True, patience=1) == (3, 3)
  with pytest.raises(ValueError, match="empty validation curve"):
    stop([], higher_is_better=True, patience=1)

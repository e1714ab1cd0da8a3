"""Early stopping: where it stops on a validation curve and which step it keeps
(`metrics.early_stop_point`, used by experiments/early_stopping_study.py), and the training
loop's `EarlyStopping` on the tiny MLP of tests/training_worker.py: it stops there, keeps only
the best step's checkpoint, and a resumed or rerun run ends where an uninterrupted one does."""
import itertools
import json

import jax
import pytest

from hilam_jax import training
from hilam_jax.training import loop
from hilam_jax.training import metrics
from tests import training_worker as tw
from tests.test_training import assert_trees_equal


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


# ----------------------------------------------------------------------------- in the loop

# A scripted validation curve (step -> score): the best is step 4 until step 12.
CURVE = {2: 0.5, 4: 0.8, 6: 0.7, 8: 0.75, 10: 0.6, 12: 0.9, 14: 0.95, 16: 0.2, 18: 0.3, 20: 0.1}


@pytest.fixture(scope="module")
def mesh():
  return training.make_mesh(jax.devices()[:1])


def _batches(mesh, start=0, stop_after=None):
  """The tiny MLP's batches from step `start`; KeyboardInterrupt after `stop_after` of them."""
  for i, step in enumerate(itertools.count(start)):
    if stop_after is not None and i == stop_after:
      raise KeyboardInterrupt
    yield training.shard_batch(tw.batch_for_step(step), mesh)


def _never(_):
  raise AssertionError("a finished early-stopped run read a batch")
  yield  # pylint: disable=unreachable


def _train(mesh, directory, *, num_steps=20, patience=4, eval_every=2, start_from=None,
           batches=None, curve=None):
  """train_loop with early stopping on the scripted `curve` ("score", max); resumes when the
  directory holds a checkpoint. Returns (state, rule, checkpointer)."""
  tx = tw.make_tx()
  ckpt = training.Checkpointer(directory, tw.CONFIG, max_to_keep=None)
  state = training.create_train_state(tw.init_params_fn(), tx, jax.random.PRNGKey(0), mesh)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
  rule = training.EarlyStopping("score", patience, "max")
  curve = curve or CURVE
  state = training.train_loop(
      state=state, train_step=training.make_train_step(tw.loss_fn, tx, mesh),
      batches=batches if batches is not None else _batches(mesh, int(state.step)),
      num_steps=num_steps, checkpointer=ckpt, checkpoint_every=3, log_every=100,
      eval_every=eval_every, eval_fn=lambda s: {"score": curve[int(s.step)], "other": 0.0},
      early_stopping=rule)
  return state, rule, ckpt


def _straight(mesh, num_steps):
  tx = tw.make_tx()
  state = training.create_train_state(tw.init_params_fn(), tx, jax.random.PRNGKey(0), mesh)
  return training.train_loop(state=state, train_step=training.make_train_step(tw.loss_fn, tx, mesh),
                             batches=_batches(mesh), num_steps=num_steps)


def test_the_loop_stops_after_patience_and_keeps_only_the_best_step(mesh, tmp_path):
  state, rule, ckpt = _train(mesh, tmp_path / "a")
  # Best 0.8 at step 4; step 8 is 4 steps later without a better score: stop there, keep 4.
  assert (rule.best_step, rule.best_value, rule.stopped_at) == (4, 0.8, 8)
  assert int(state.step) == 4 and ckpt.all_steps() == [4]
  assert_trees_equal(state, _straight(mesh, 4))  # the state of step 4, restored
  marker = json.load(open(tmp_path / "a" / loop.EARLY_STOPPED))
  assert marker == {"metric": "score", "mode": "max", "best_step": 4, "best_value": 0.8,
                    "stopped_at": 8}
  ckpt.close()
  # A rerun trains no further (reads no batch) and keeps the same state.
  again, rule, ckpt = _train(mesh, tmp_path / "a", batches=_never(None))
  assert rule.stopped_at == 8 and ckpt.all_steps() == [4]
  assert_trees_equal(again, state)
  ckpt.close()


def test_an_interrupted_run_resumes_to_the_same_stop_and_state(mesh, tmp_path):
  done, _, ckpt = _train(mesh, tmp_path / "straight")
  ckpt.close()
  with pytest.raises(KeyboardInterrupt):
    _train(mesh, tmp_path / "cut", batches=_batches(mesh, stop_after=7))
  ckpt = training.Checkpointer(tmp_path / "cut", tw.CONFIG, max_to_keep=None)
  # The step of the interruption and the best so far; the periodic step-6 checkpoint is gone.
  assert ckpt.all_steps() == [4, 7]
  assert ckpt.restore_extra(7)["early_stopping"]["best_step"] == 4
  ckpt.close()
  resumed, rule, ckpt = _train(mesh, tmp_path / "cut")
  assert (rule.best_step, rule.stopped_at) == (4, 8) and ckpt.all_steps() == [4]
  assert_trees_equal(resumed, done)
  ckpt.close()


def test_a_run_to_its_last_step_keeps_its_best_evaluation_there_too(mesh, tmp_path):
  # Evaluations at 5, 10 and at the last step 12 (not a multiple of eval_every): best 10.
  curve = {5: 0.1, 10: 0.9, 12: 0.4}
  state, rule, ckpt = _train(mesh, tmp_path, num_steps=12, patience=100, eval_every=5,
                             curve=curve)
  assert (rule.best_step, rule.stopped_at) == (10, 12) and ckpt.all_steps() == [10]
  assert_trees_equal(state, _straight(mesh, 10))
  ckpt.close()


def test_bad_rules_are_refused(mesh):
  with pytest.raises(ValueError, match="patience must be an integer >= 1"):
    training.EarlyStopping("score", 0)
  with pytest.raises(ValueError, match="mode 'best' not in"):
    training.EarlyStopping("score", 10, "best")
  rule = training.EarlyStopping("loss", 10, "min")
  with pytest.raises(ValueError, match=r"'loss' is not an eval metric of this run: \['score'\]"):
    rule.update(2, {"score": 1.0})
  assert not rule.update(2, {"loss": float("nan")}) and rule.best_step is None
  assert rule.update(4, {"loss": 2.0}) and not rule.update(6, {"loss": float("nan")})
  assert rule.update(8, {"loss": 1.0}) and not rule.update(10, {"loss": 1.0})
  assert (rule.best_step, rule.should_stop(17), rule.should_stop(18)) == (8, False, True)
  with pytest.raises(ValueError, match="followed 'loss' \\(min\\), this run 'score'"):
    training.EarlyStopping("score", 10).load_state_dict(rule.state_dict())
  state = training.create_train_state(tw.init_params_fn(), tw.make_tx(), jax.random.PRNGKey(0),
                                      mesh)
  with pytest.raises(ValueError, match="needs a checkpointer"):
    training.train_loop(state=state, train_step=None, batches=[], num_steps=2,
                        eval_fn=lambda s: {}, eval_every=1, early_stopping=rule)

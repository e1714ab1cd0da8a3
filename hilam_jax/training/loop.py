"""The generic training loop: steps, NaN guard, logging, evaluation and checkpoints.

Host synchronisation is kept off the critical path: the metrics of step k are fetched (and
checked for NaN/Inf) after step k+1 has been dispatched, except at log, eval and checkpoint
steps, which wait for their own step so that a checkpoint never holds an unchecked state.

Preemption (`hilam_jax.preemption`): while the loop runs, SIGTERM only sets a flag; at the next
step boundary the loop checks the pending metrics, saves a checkpoint of the current step, waits
for it and raises `Preempted` (a KeyboardInterrupt), and a rerun resumes from that step.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
from absl import logging

from hilam_jax import preemption
from hilam_jax.training import precision
from hilam_jax.training.checkpoint import Checkpointer
from hilam_jax.training.metrics import EarlyStopping, MetricWriter, Progress

WATCHED_METRICS = ("loss", "grad_norm")
# Written beside the checkpoints when an early-stopped run ends (`EarlyStopping.state_dict`).
EARLY_STOPPED = "early_stopping.json"


class NonFiniteError(RuntimeError):
  """Training produced a NaN or Inf loss or gradient norm."""


def check_finite(metrics: Mapping[str, Any], step: int,
                 keys: tuple[str, ...] = WATCHED_METRICS) -> None:
  """Raises `NonFiniteError` naming the step and which of `keys` is NaN/Inf.

  Args:
    metrics: step metrics (host or device values); absent keys are not checked.
    step: the 1-based number of the update that produced them (= state.step after it).
  """
  present = [k for k in keys if k in metrics]
  host = dict(zip(present, jax.device_get([metrics[k] for k in present])))
  bad = []
  for key, value in host.items():  # in the order of `keys`
    value = np.asarray(value)
    if not np.all(np.isfinite(value)):
      kind = "NaN" if np.any(np.isnan(value)) else "Inf"
      bad.append(f"{key} is {kind}")
  if bad:
    others = ", ".join(f"{k}={float(np.asarray(v)):.4g}" for k, v in host.items())
    raise NonFiniteError(
        f"Non-finite value at step {step}: {'; '.join(bad)} ({others}). Training stopped; the "
        "last checkpoint holds the latest finite state. Lower the learning rate, clip "
        "gradients, or check the batch for NaN/Inf inputs. If this run resumed from a "
        "checkpoint, the checkpoint may be damaged: one written before checksums existed is "
        "restored unverified.")


class _MeanAccumulator:
  """Means of host scalar metrics over the steps since the last reset."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._count = 0

  def add(self, metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
      self._sums[key] = self._sums.get(key, 0.0) + float(np.asarray(value))
    self._count += 1

  def pop_means(self) -> dict[str, float]:
    means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
    self._sums, self._count = {}, 0
    return means


def run_eval(eval_step: Callable[[Any, Any, jax.Array], Mapping[str, jax.Array]], params: Any,
             batches: Iterable[Any], rng: jax.Array, num_batches: int | None = None
             ) -> dict[str, float]:
  """Mean of `eval_step(params, batch, fold_in(rng, i))` over (up to `num_batches`) batches.

  A convenience for building the `eval_fn(state)` of `train_loop`; every batch must already be
  sharded (`shard_batch`). The mean is unweighted over batches (use equal-sized batches).
  """
  sums, count = None, 0
  for i, batch in enumerate(batches):
    if num_batches is not None and i >= num_batches:
      break
    metrics = eval_step(params, batch, jax.random.fold_in(rng, i))
    sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
    count += 1
  if not count:
    raise ValueError("run_eval: no evaluation batches.")
  return {k: float(v) / count for k, v in jax.device_get(sums).items()}


def check_run_config(config: Any) -> None:
  """Refuses settings every trainer needs, before anything is built or written.

  Raises:
    ValueError: `num_steps` < 1 (nothing to train; a run would evaluate its random init and
      mark itself finished), `log_every` < 1 (the loop logs at multiples of it), `batch_size`
      < 1 (found only when the first batch was built, after the workdir was written) or an
      unknown `compute_dtype` (precision.COMPUTE_DTYPES).
  """
  for key in ("num_steps", "log_every", "batch_size"):
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"config.{key} must be an integer >= 1, got {value!r}")
  precision.check_compute_dtype(config.get("compute_dtype", "float32"))


def stop_requested(request: preemption.StopRequest) -> bool:
  """Whether to stop at this step boundary (SIGTERM received by this or any other process).

  Single process: this process's flag. With several processes (jax.distributed) every process
  must stop at the same step, or they would save different steps and hang in the next
  collective: the flags are all-gathered (one tiny collective per step boundary, which every
  process reaches in the same order) and any one of them stops all.
  """
  if jax.process_count() == 1:
    return request.requested
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray(request.requested, np.int32))
  return bool(np.any(flags))


def _state_is_alive(state: Any) -> bool:
  """False if any buffer of `state` was donated (interrupt inside the step call)."""
  return not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state))


def train_loop(*, state: Any, train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
               batches: Iterator[Any], num_steps: int, checkpointer: Checkpointer | None = None,
               writer: MetricWriter | None = None, log_every: int = 50,
               checkpoint_every: int | None = None, eval_every: int | None = None,
               eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
               checkpoint_extra: Callable[[], Mapping[str, Any]] | None = None,
               progress_keys: tuple[str, ...] = ("loss",),
               early_stopping: EarlyStopping | None = None) -> Any:
  """Trains from `state.step` up to `num_steps` updates and returns the final state.

  Args:
    state: a `TrainState` (fresh or restored: the loop resumes from its step).
    train_step: from `make_train_step`; donates the state.
    batches: iterator of already sharded global batches (`shard_batches(numpy_iter, mesh)`).
      When resuming, the trainer is responsible for its position (e.g. via `checkpoint_extra`
      and `Checkpointer.restore_extra`, or a seed derived from the step).
    num_steps: total number of updates of the run (not the number still to do).
    checkpointer: saves every `checkpoint_every` steps (None: whenever its own
      `save_interval_steps` is due), at the final step, on KeyboardInterrupt and on SIGTERM.
    writer: receives, every `log_every` steps, the means since the last log of all train
      metrics as "train/<name>" and the throughput as "steps_per_sec"; eval metrics as
      "eval/<name>".
    log_every: logging interval (also the interval at which metrics are averaged).
    checkpoint_every: explicit checkpoint interval, overriding the checkpointer's.
    eval_every: run `eval_fn(state)` every this many steps.
    eval_fn: state -> dict of scalars (see `run_eval`).
    checkpoint_extra: () -> JSON-able dict saved as the checkpoint's "extra" item.
    progress_keys: metrics shown on the console progress line (all go to TensorBoard).
    early_stopping: stop `patience` steps after the best evaluation of its metric (evaluated
      every `eval_every` steps and at `num_steps`) and return the best step's state. Needs
      `checkpointer` (its max_to_keep must be None: the loop keeps the newest and the best
      checkpoint and, at the end, only the best) and `eval_fn`. Its state is saved in the
      checkpoint extra ("early_stopping") and restored from the checkpoint the state was
      restored from, so a resumed run stops where an uninterrupted one does.

  Raises:
    NonFiniteError: loss or grad_norm became NaN/Inf (nothing is saved for that state).
    KeyboardInterrupt: re-raised after saving a checkpoint of the current state.
    preemption.Preempted: SIGTERM arrived; raised at the next step boundary after a checkpoint
      of that step was saved and committed. The SIGTERM handler is the loop's only while it
      runs; the previous one is restored afterwards.
  """
  step = int(jax.device_get(state.step))
  if early_stopping is not None:
    if checkpointer is None or eval_fn is None or not eval_every:
      raise ValueError("early stopping needs a checkpointer, an eval_fn and eval_every")
    if step > 0:  # resumed: the rule's state as of the restored checkpoint, or the run's end
      early_stopping.load_state_dict(checkpointer.read_json(EARLY_STOPPED) or
                                     checkpointer.restore_extra().get("early_stopping"))
  if step >= num_steps or (early_stopping is not None and early_stopping.should_stop(step)):
    logging.info("Nothing to train: state is at step %d (num_steps %d).", step, num_steps)
    return _keep_best(state, step, checkpointer, early_stopping)
  batches = iter(batches)
  progress = Progress(num_steps, log_every, keys=progress_keys)
  means = _MeanAccumulator()
  pending = None  # (step, device metrics) of the newest step not yet checked on the host

  def finish(step_done: int, metrics: Mapping[str, Any]) -> None:
    host = jax.device_get(dict(metrics))
    check_finite(host, step_done)
    means.add(host)
    progress.update(step_done, host)
    if step_done % log_every == 0 or step_done == num_steps:
      scalars = {f"train/{k}": v for k, v in means.pop_means().items()}
      if progress.steps_per_sec:
        scalars["steps_per_sec"] = progress.steps_per_sec
      if writer is not None:
        writer.write_scalars(step_done, scalars)

  def save(step_now: int, force: bool) -> None:
    extra = dict(checkpoint_extra()) if checkpoint_extra is not None else {}
    if early_stopping is not None:
      extra["early_stopping"] = early_stopping.state_dict()
    checkpointer.save(step_now, state, force=force, extra=extra)
    if early_stopping is not None:  # the newest and the best
      checkpointer.keep_only([step_now, early_stopping.best_step or step_now])

  def stop(request: preemption.StopRequest) -> None:
    """Checks the pending metrics, saves the current step, waits for it, raises Preempted."""
    nonlocal pending
    request.handled = True  # a NaN found below is raised as such
    if pending is not None:
      finish(*pending)  # never save a state whose step produced NaN
      pending = None
    if checkpointer is not None:
      logging.warning("SIGTERM%s: saving checkpoint at step %d before stopping.",
                      "" if request.requested else " (to another process)", step)
      save(step, force=True)
      checkpointer.wait_until_finished()
    else:
      logging.warning("SIGTERM at step %d: stopping (no checkpointer, nothing saved).", step)
    raise preemption.Preempted(f"SIGTERM: stopped at step {step}")

  logging.info("Training from step %d to %d.", step, num_steps)
  try:
    with preemption.sigterm_sets_flag() as request:
      while step < num_steps:
        if stop_requested(request):  # a step boundary
          stop(request)
        try:
          batch = next(batches)
        except StopIteration:
          logging.warning("Batch iterator exhausted after step %d (num_steps %d).", step,
                          num_steps)
          break
        state, metrics = train_step(state, batch)
        step += 1
        if pending is not None:
          finish(*pending)  # previous step, while this one runs
        pending = (step, metrics)
        do_eval = bool(eval_fn is not None and eval_every and step % eval_every == 0) or (
            early_stopping is not None and step == num_steps)
        do_ckpt = checkpointer is not None and step < num_steps and (
            step % checkpoint_every == 0 if checkpoint_every else checkpointer.should_save(step))
        if do_eval or do_ckpt or step % log_every == 0 or step == num_steps:
          finish(*pending)
          pending = None
        if do_eval or do_ckpt:
          side_start = time.perf_counter()
        if do_eval:
          eval_metrics = jax.device_get(dict(eval_fn(state)))
          logging.info("eval step %d | %s", step, " | ".join(
              f"{k} {float(np.asarray(v)):.4g}" for k, v in eval_metrics.items()))
          if writer is not None:
            writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
          if early_stopping is not None and early_stopping.update(step, eval_metrics):
            do_ckpt = True  # the best state so far: what the run keeps if nothing beats it
        if do_ckpt:
          save(step, force=True)
        if do_eval or do_ckpt:
          progress.exclude(time.perf_counter() - side_start)  # keep steps/s about training
        if early_stopping is not None and early_stopping.should_stop(step):
          logging.info("Early stopping at step %d: no better %s than %.4g (step %d) for %d "
                       "steps.", step, early_stopping.metric, early_stopping.best_value,
                       early_stopping.best_step, step - early_stopping.best_step)
          early_stopping.stopped_at = step
          break
      if pending is not None:
        finish(*pending)
        pending = None
      if checkpointer is not None:
        save(step, force=True)
        # Awaited while SIGTERM only sets the flag: once the block ends the signal ends the
        # process, and a final checkpoint still being written would be lost.
        checkpointer.wait_until_finished()
      if stop_requested(request):  # during the last step or its save: that step is saved
        stop(request)
      state = _keep_best(state, step, checkpointer, early_stopping)
  except preemption.Preempted:
    raise  # saved by `stop`
  except KeyboardInterrupt:
    if checkpointer is not None:
      if pending is not None:
        finish(*pending)  # never save a state whose step produced NaN
      if _state_is_alive(state):
        step_now = int(jax.device_get(state.step))
        logging.warning("Interrupted: saving checkpoint at step %d before stopping.", step_now)
        save(step_now, force=True)
      else:
        logging.error("Interrupted inside a train step: its input state was donated, nothing "
                      "saved beyond the last checkpoint.")
    raise
  finally:
    if writer is not None:
      writer.flush()
    if checkpointer is not None:
      checkpointer.wait_until_finished()
  return state


def _keep_best(state: Any, step: int, checkpointer: Checkpointer | None,
               early_stopping: EarlyStopping | None) -> Any:
  """With early stopping, at the run's end: the best step's state (restored unless it is
  `state`) and only its checkpoint, so that the run's checkpoint is the policy it keeps.

  The rule's final state (`stopped_at`) is written first as `EARLY_STOPPED` beside the
  checkpoints: a rerun then trains no further, whichever checkpoints an interruption left."""
  if early_stopping is None or early_stopping.best_step is None:
    return state
  if early_stopping.stopped_at is None:
    early_stopping.stopped_at = step
  checkpointer.write_json(EARLY_STOPPED, early_stopping.state_dict())
  best = early_stopping.best_step
  if best != int(jax.device_get(state.step)):
    logging.info("Keeping step %d (%s %.4g) of the %d steps trained; the later checkpoints are "
                 "deleted.", best, early_stopping.metric, early_stopping.best_value,
                 early_stopping.stopped_at)
    state = checkpointer.restore(state, step=best)
  checkpointer.keep_only([best])
  return state


def finish_run(state: Any, eval_fn: Callable[[Any], Mapping[str, Any]],
               writer: MetricWriter, checkpointer: Checkpointer) -> dict[str, float]:
  """Final evaluation of a trained state: logged as eval/* scalars; writer and checkpointer
  flushed and closed. Returns the eval metrics."""
  final = {k: float(v) for k, v in eval_fn(state).items()}
  writer.write_scalars(int(state.step), {f"eval/{k}": v for k, v in final.items()})
  writer.close()
  checkpointer.wait_until_finished()
  checkpointer.close()
  logging.info("final eval: %s", {k: round(v, 5) for k, v in final.items()})
  return final


def run_training(*, what: str, state: Any, train_step: Callable[[Any, Any], tuple[Any, Any]],
                 batches: Iterator[Any], config: Any, workdir: str, checkpointer: Checkpointer,
                 eval_fn: Callable[[Any], Mapping[str, Any]],
                 progress_keys: tuple[str, ...] = ("loss",),
                 checkpoint_extra: Callable[[], Mapping[str, Any]] | None = None,
                 early_stopping: EarlyStopping | None = None) -> dict[str, float]:
  """Every trainer's tail: TensorBoard writer, a log line with the model size, `train_loop` for
  `config.num_steps` (eval every `config.eval_every`, log every `config.log_every`), then
  `finish_run`. `what` names the model in the log line. Returns the final eval metrics (of the
  best step's state with `early_stopping`)."""
  writer = MetricWriter(os.path.join(workdir, "tensorboard"))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("training %s (%s params) for %d steps, batch %d on %d devices", what,
               f"{num_params:,}", config.num_steps, config.batch_size, jax.device_count())
  state = train_loop(
      state=state, train_step=train_step, batches=batches, num_steps=config.num_steps,
      checkpointer=checkpointer, writer=writer, log_every=config.log_every,
      eval_every=config.eval_every, eval_fn=eval_fn, checkpoint_extra=checkpoint_extra,
      progress_keys=progress_keys, early_stopping=early_stopping)
  return finish_run(state, eval_fn, writer, checkpointer)

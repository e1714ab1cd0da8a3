"""Training telemetry: TensorBoard event files and a progress line with throughput and ETA."""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging


def _tf():
  """TensorFlow imported lazily (slow to import) and kept away from any accelerator."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialized by another user of TF in this process
    pass
  return tf


def _plugin_metadata(tf, plugin_name: str):
  """The SummaryMetadata TensorBoard's `scalars`/`histograms` plugins look for.

  Built by hand because `tf.summary.scalar`/`histogram` need the `tensorboard` package, which
  is not a dependency; `tf.summary.write` plus this metadata produces the same events (the
  plugins' content proto at version 0 serializes to empty bytes).
  """
  metadata = tf.compat.v1.SummaryMetadata()
  metadata.plugin_data.plugin_name = plugin_name
  return metadata


def histogram_buckets(values: np.ndarray, buckets: int = 30) -> np.ndarray:
  """(buckets, 3) float64 rows [left edge, right edge, count]: TensorBoard's histogram tensor."""
  values = np.asarray(values, np.float64).ravel()
  values = values[np.isfinite(values)]
  if values.size == 0:
    return np.zeros((0, 3))
  lo, hi = values.min(), values.max()
  if lo == hi:
    lo, hi = lo - 0.5, hi + 0.5
  counts, edges = np.histogram(values, bins=buckets, range=(lo, hi))
  return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=-1)


class MetricWriter:
  """Writes scalars (and histograms) as TensorBoard event files under `logdir`.

  Only process 0 writes; on the other processes every method is a no-op, so callers need no
  `if jax.process_index() == 0` of their own. Values may be device arrays (fetched here).
  """

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writer = None
    if jax.process_index() == 0:
      tf = _tf()
      self._writer = tf.summary.create_file_writer(logdir)
      self._scalar_meta = _plugin_metadata(tf, "scalars")
      self._hist_meta = _plugin_metadata(tf, "histograms")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if self._writer is None:
      return
    tf = _tf()
    scalars = jax.device_get(dict(scalars))
    with self._writer.as_default():
      for name, value in scalars.items():
        tf.summary.write(name, tf.constant(float(np.asarray(value)), tf.float32),
                         step=int(step), metadata=self._scalar_meta)

  def write_histograms(self, step: int, arrays: Mapping[str, Any], buckets: int = 30) -> None:
    if self._writer is None:
      return
    tf = _tf()
    arrays = jax.device_get(dict(arrays))
    with self._writer.as_default():
      for name, value in arrays.items():
        tf.summary.write(name, tf.constant(histogram_buckets(value, buckets)), step=int(step),
                         metadata=self._hist_meta)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_scalars(logdir: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) pairs of one scalar tag from the event files in `logdir`, sorted by step."""
  tf = _tf()
  points = {}
  for path in sorted(tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          points[int(event.step)] = float(tf.make_ndarray(value.tensor))
  return sorted(points.items())


class EarlyStopping:
  """Early stopping on a validation metric: the best value and its step so far, and when to stop.

  A run stops at the first evaluation `patience` steps after the best one and keeps the best
  step's state. `update` takes each evaluation in order; a NaN value is never a best. The state
  (`state_dict` / `load_state_dict`) goes into the run's checkpoints so that a resumed run
  stops where an uninterrupted one does.
  """

  def __init__(self, metric: str, patience: int, mode: str = "max"):
    if not metric:
      raise ValueError("early stopping needs a metric (an eval metric name, e.g. "
                       "'action/accuracy')")
    if mode not in ("max", "min"):
      raise ValueError(f"early stopping mode {mode!r} not in ('max', 'min')")
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
      raise ValueError(f"early stopping patience must be an integer >= 1, got {patience!r}")
    self.metric, self.patience, self.mode = metric, patience, mode
    self.best_step: int | None = None
    self.best_value: float | None = None
    self.stopped_at: int | None = None  # set when the run ends: it trains no further

  def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """Takes the evaluation of `step`; returns whether it is the new best."""
    if self.metric not in metrics:
      raise ValueError(f"early stopping metric {self.metric!r} is not an eval metric of this "
                       f"run: {sorted(metrics)}")
    value = float(np.asarray(metrics[self.metric]))
    if np.isnan(value):
      return False
    better = self.best_value is None or (
        value > self.best_value if self.mode == "max" else value < self.best_value)
    if better:
      self.best_step, self.best_value = int(step), value
    return better

  def should_stop(self, step: int) -> bool:
    """Whether a run at `step` (just evaluated, or resumed there) stops."""
    if self.stopped_at is not None:
      return True
    return self.best_step is not None and int(step) - self.best_step >= self.patience

  def state_dict(self) -> dict[str, Any]:
    return {"metric": self.metric, "mode": self.mode, "best_step": self.best_step,
            "best_value": self.best_value, "stopped_at": self.stopped_at}

  def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
    """Restores `state_dict()` (None: nothing evaluated yet); refuses another metric's."""
    if not state:
      return
    if (state["metric"], state["mode"]) != (self.metric, self.mode):
      raise ValueError(f"the checkpoint's early stopping followed {state['metric']!r} "
                       f"({state['mode']}), this run {self.metric!r} ({self.mode})")
    self.best_step, self.best_value = state["best_step"], state["best_value"]
    self.stopped_at = state.get("stopped_at")


def early_stop_point(curve: list[tuple[int, float]], *, higher_is_better: bool,
                     patience: int) -> tuple[int, int]:
  """(steps trained, best step kept) of early stopping (`EarlyStopping`) on `curve`
  [(step, value)], in order: training stops at the first evaluation `patience` steps after the
  best so far (or at the curve's end) and keeps the best step seen until then."""
  if not curve:
    raise ValueError("an empty validation curve")
  rule = EarlyStopping("value", patience, "max" if higher_is_better else "min")
  for step, value in curve:
    rule.update(step, {"value": value})
    if rule.should_stop(step):
      return step, rule.best_step
  return curve[-1][0], (rule.best_step if rule.best_step is not None else curve[0][0])


def format_duration(seconds: float) -> str:
  """3.2 -> "3s", 72 -> "1m12s", 7500 -> "2h05m"."""
  seconds = int(round(max(seconds, 0.0)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
  """Logs "step 120/1000 | loss 0.123 | 12.3 steps/s | ETA 1m12s" every `log_every` steps.

  Call `update` after every step (or at least at every log step) with host metrics. Throughput
  is measured between consecutive logged updates; the clock starts at the first update, whose
  step already paid for compilation, so compile time never enters steps/s. The first logged
  line therefore has no rate unless a full interval has passed since the first update.
  Time spent in evaluation or checkpointing is left out via `exclude`.
  """

  def __init__(self, total_steps: int, log_every: int, keys: Sequence[str] = ("loss",)):
    self.total_steps = int(total_steps)
    self.log_every = max(int(log_every), 1)
    self.keys = tuple(keys)
    self.steps_per_sec: float | None = None  # latest measurement
    self._last: tuple[int, float] | None = None  # (step, time) of the last clock reading

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` spent on something else (eval, checkpointing) out of steps/s."""
    if self._last is not None:
      self._last = (self._last[0], self._last[1] + seconds)

  def update(self, step: int, metrics: Mapping[str, Any]) -> str | None:
    """Records that `step` finished; logs and returns the line if it is a log step."""
    step = int(step)
    now = time.perf_counter()
    if self._last is None:
      jax.block_until_ready(metrics)  # step finished (compile included) before the clock starts
      now = time.perf_counter()
      self._last = (step, now)
    if step % self.log_every and step != self.total_steps:
      return None
    last_step, last_time = self._last
    if step > last_step and now > last_time:
      jax.block_until_ready(metrics)
      now = time.perf_counter()
      self.steps_per_sec = (step - last_step) / (now - last_time)
      self._last = (step, now)
    parts = [f"step {step}/{self.total_steps}"]
    host = jax.device_get({k: metrics[k] for k in self.keys if k in metrics})
    parts += [f"{k} {float(np.asarray(v)):.4g}" for k, v in host.items()]
    if self.steps_per_sec:
      parts.append(f"{self.steps_per_sec:.3g} steps/s")
      parts.append(f"ETA {format_duration((self.total_steps - step) / self.steps_per_sec)}")
    line = " | ".join(parts)
    logging.info("%s", line)
    return line

"""Tests of the shared training core `hilam_jax.training` on a tiny MLP regression."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

from hilam_jax import preemption
from hilam_jax import training
from hilam_jax.training import distributed
from hilam_jax.training import metrics as metrics_lib
from tests import training_worker as tw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mesh():
  return training.make_mesh(jax.devices()[:1])


def sharded_batches(mesh, start=0, poison_step=None):
  """Deterministic batches from step `start`; the batch of update `poison_step` holds a NaN."""
  step = start
  while True:
    batch = tw.batch_for_step(step)
    if poison_step is not None and step + 1 == poison_step:
      batch["x"][0, 0] = np.nan
    yield training.shard_batch(batch, mesh)
    step += 1


def new_state(mesh, tx=None):
  return training.create_train_state(tw.init_params_fn(), tx or tw.make_tx(),
                                     jax.random.PRNGKey(0), mesh)


def checkpoint_at_step_1(mesh, directory, tx):
  ckpt = training.Checkpointer(directory, tw.CONFIG)
  ckpt.save(1, new_state(mesh, tx), force=True)
  ckpt.close()


def assert_trees_equal(a, b):
  a_leaves, a_def = jax.tree.flatten(a)
  b_leaves, b_def = jax.tree.flatten(b)
  assert a_def == b_def
  for x, y in zip(a_leaves, b_leaves):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_eight_devices_match_one_device(mesh, tmp_path):
  """Same losses and params on 1 and on 8 forced host devices; checkpoint reshards to 1."""
  out, ckpt_dir = tmp_path / "r8.npz", tmp_path / "ckpt8"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "tests.training_worker", f"--out={out}",
       f"--checkpoint_dir={ckpt_dir}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r8 = np.load(out)
  info = json.loads(str(r8["info"]))
  assert info["device_count"] == 8 and info["mesh_size"] == 8
  # The global batch of 16 is split 2 rows per device over 8 distinct devices.
  assert info["batch_num_shards"] == 8 and info["batch_shard_devices"] == 8
  assert info["batch_shard_rows"] == [2]
  assert info["params_replicated"] and info["params_num_devices"] == 8
  assert "not divisible by the 8 local devices" in info["indivisible_error"]

  r1 = tw.run(mesh, num_steps=5)
  assert r1["info"]["batch_num_shards"] == 1
  np.testing.assert_allclose(r8["losses"], r1["losses"], rtol=1e-5)
  assert r1["losses"][-1] < r1["losses"][0]
  # inject_hyperparams: the metric is the rate used by each update (linear schedule).
  np.testing.assert_allclose(r1["lrs"], 3e-2 - np.arange(5) * (2.7e-2 / 20), rtol=1e-6)
  for name, value in r1["params"].items():
    np.testing.assert_allclose(r8["param" + name], value, rtol=1e-5, atol=1e-6, err_msg=name)

  # The 8-device checkpoint restores onto this 1-device process.
  params = training.restore_params(ckpt_dir, mesh=mesh)
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    np.testing.assert_array_equal(np.asarray(value), r8["param" + jax.tree_util.keystr(path)])
    assert value.sharding.is_fully_replicated


def test_two_processes_match_one_process_of_eight_devices(mesh, tmp_path):
  """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo) train like 1 x 8: same
  losses and params (rtol 1e-5: the all-reduce crosses processes); the checkpoint both write
  restores here."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out8 = tmp_path / "r8.npz"
  proc = subprocess.run([sys.executable, "-m", "tests.training_worker", f"--out={out8}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  address, ckpt_dir = f"127.0.0.1:{distributed.free_local_port()}", tmp_path / "ckpt2"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.training_worker", f"--out={tmp_path / f'p{i}.npz'}",
       f"--checkpoint_dir={ckpt_dir}", f"--coordinator_address={address}", "--num_processes=2",
       f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  r8 = np.load(out8)
  for i in range(2):
    r = np.load(tmp_path / f"p{i}.npz")
    info = json.loads(str(r["info"]))
    assert (info["process_count"], info["process_index"]) == (2, i)
    assert info["device_count"] == 8 and info["local_device_count"] == 4
    assert info["mesh_size"] == 8 and info["batch_num_shards"] == 4  # its 4 local shards
    assert info["batch_shard_rows"] == [2] and info["params_num_devices"] == 8
    assert "not divisible by the 4 local devices" in info["indivisible_error"]
    np.testing.assert_allclose(r["losses"], r8["losses"], rtol=1e-5)
    names = [k for k in r.files if k.startswith("param")]
    assert names and sorted(names) == sorted(k for k in r8.files if k.startswith("param"))
    for name in names:
      np.testing.assert_allclose(r[name], r8[name], rtol=1e-5, atol=1e-6, err_msg=name)
  p0 = np.load(tmp_path / "p0.npz")
  params = training.restore_params(ckpt_dir, mesh=mesh)
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    np.testing.assert_array_equal(np.asarray(value), p0["param" + jax.tree_util.keystr(path)])


def test_checkpoint_round_trip_and_resume(mesh, tmp_path):
  tx = tw.make_tx()
  train_step = training.make_train_step(tw.loss_fn, tx, mesh)
  abstract = training.abstract_train_state(tw.init_params_fn(), tx, mesh)

  # 5 steps straight; saving at step 3 mid-run (async save, then the state is donated).
  ckpt = training.Checkpointer(tmp_path / "a", tw.CONFIG)
  straight = training.train_loop(state=new_state(mesh, tx), train_step=train_step,
                                 batches=sharded_batches(mesh), num_steps=5, checkpointer=ckpt,
                                 checkpoint_every=3, log_every=100,
                                 checkpoint_extra=lambda: {"data": {"seed": np.int64(7)}})
  assert ckpt.all_steps() == [3, 5] and ckpt.latest_step() == 5
  assert ckpt.restore_extra(3) == {"data": {"seed": 7}}
  # The step-3 save is intact although its buffers were donated to step 4 right after.
  from_3 = training.train_loop(state=ckpt.restore(abstract, step=3), train_step=train_step,
                               batches=sharded_batches(mesh, start=3), num_steps=5)
  assert_trees_equal(from_3, straight)

  # Bit-identical restore into an abstract target: params, opt_state, step, rng.
  restored = ckpt.restore(abstract)
  assert isinstance(restored, training.TrainState)
  assert_trees_equal(restored, straight)
  assert int(restored.step) == 5
  params_only = training.restore_params(tmp_path / "a", abstract.params)
  assert_trees_equal(params_only, straight.params)
  assert_trees_equal(training.restore_params(tmp_path / "a", step=3),
                     ckpt.restore(abstract, step=3).params)
  ckpt.close()

  # Resume: 3 steps, checkpoint (final save), restore in a fresh Checkpointer, 2 more steps.
  ckpt_b = training.Checkpointer(tmp_path / "b", tw.CONFIG)
  training.train_loop(state=new_state(mesh, tx), train_step=train_step,
                      batches=sharded_batches(mesh), num_steps=3, checkpointer=ckpt_b)
  ckpt_b.close()
  ckpt_b = training.Checkpointer(tmp_path / "b", tw.CONFIG)
  state = ckpt_b.restore(new_state(mesh, tx))  # a concrete state works as the target too
  assert int(state.step) == 3
  resumed = training.train_loop(state=state, train_step=train_step,
                                batches=sharded_batches(mesh, start=3), num_steps=5,
                                checkpointer=ckpt_b)
  ckpt_b.close()
  assert_trees_equal(resumed, straight)
  assert training.load_checkpoint_config(tmp_path / "b") == tw.CONFIG


def test_keyboard_interrupt_saves_checkpoint(mesh, tmp_path):
  tx = tw.make_tx()

  def interrupted(n):
    batches = sharded_batches(mesh)
    for _ in range(n):
      yield next(batches)
    raise KeyboardInterrupt

  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)  # save_interval_steps 1000: none due
  with pytest.raises(KeyboardInterrupt):
    training.train_loop(state=new_state(mesh, tx),
                        train_step=training.make_train_step(tw.loss_fn, tx, mesh),
                        batches=interrupted(4), num_steps=10, checkpointer=ckpt)
  assert ckpt.all_steps() == [4]
  ckpt.close()


def test_mismatched_config_is_refused(mesh, tmp_path):
  checkpoint_at_step_1(mesh, tmp_path, tw.make_tx())

  other = {**tw.CONFIG, "model": {"hidden": 16}}
  with pytest.raises(training.ConfigMismatchError, match=r"model\.hidden: checkpoint 32 != "
                     r"given 16"):
    training.Checkpointer(tmp_path, other)
  # Explicitly allowed keys may differ (e.g. extending a run).
  training.Checkpointer(tmp_path, {**tw.CONFIG, "num_steps": 50},
                        allowed_config_changes=("num_steps",)).close()
  # A knob added since the checkpoint was written resumes at its neutral value only (an older
  # run, then the code upgraded: compute_dtype did not exist before mixed precision).
  assert "compute_dtype" not in tw.CONFIG
  training.Checkpointer(tmp_path, {**tw.CONFIG, "compute_dtype": "float32"}).close()
  with pytest.raises(training.ConfigMismatchError,
                     match=r"compute_dtype: checkpoint <absent> != given 'bfloat16'"):
    training.Checkpointer(tmp_path, {**tw.CONFIG, "compute_dtype": "bfloat16"})

  # Params of a differently sized model: the error names the parameter path and shapes.
  wrong = jax.eval_shape(tw.init_params_fn(hidden=16), jax.random.PRNGKey(0))
  with pytest.raises(training.CheckpointMismatchError,
                     match=r"shape mismatch at Dense_0/kernel: checkpoint \(4, 32\) vs "
                           r"expected \(4, 16\)"):
    training.restore_params(tmp_path, wrong)
  # A missing key is an error, never a partial restore.
  right = jax.eval_shape(tw.init_params_fn(), jax.random.PRNGKey(0))
  partial = {"Dense_0": right["Dense_0"]}
  with pytest.raises(training.CheckpointMismatchError, match=r"Dense_1/kernel"):
    training.restore_params(tmp_path, partial)


def test_nan_guard_names_step_and_quantity(mesh, tmp_path):
  tx = tw.make_tx()
  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)
  with pytest.raises(training.NonFiniteError,
                     match=r"step 3: loss is NaN; grad_norm is NaN"):
    training.train_loop(state=new_state(mesh, tx),
                        train_step=training.make_train_step(tw.loss_fn, tx, mesh),
                        batches=sharded_batches(mesh, poison_step=3), num_steps=10,
                        checkpointer=ckpt, checkpoint_every=1)
  assert ckpt.all_steps() == [1, 2]  # the non-finite state was never saved
  ckpt.close()
  with pytest.raises(training.NonFiniteError, match=r"step 7: grad_norm is Inf"):
    training.check_finite({"loss": np.float32(1.0), "grad_norm": np.float32(np.inf)}, 7)
  training.check_finite({"loss": 1.0, "grad_norm": 2.0, "other": np.nan}, 1)


def read_events(logdir):
  """{tag: {step: (plugin name, value array)}} from the event files in `logdir`."""
  events = {}
  for path in tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(record)
      for value in event.summary.value:
        events.setdefault(value.tag, {})[event.step] = (
            value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor))
  return events


def test_writer_progress_and_eval(mesh, tmp_path):
  tx = tw.make_tx()
  state = new_state(mesh, tx)
  eval_step = training.make_eval_step(lambda p, b, r: tw.loss_fn(p, b, r)[1], mesh)
  eval_batches = [training.shard_batch(tw.batch_for_step(100 + i), mesh) for i in range(2)]
  writer = training.MetricWriter(str(tmp_path))
  training.train_loop(
      state=state, train_step=training.make_train_step(tw.loss_fn, tx, mesh),
      batches=sharded_batches(mesh), num_steps=6, writer=writer, log_every=2, eval_every=3,
      eval_fn=lambda s: training.run_eval(eval_step, s.params, eval_batches,
                                          jax.random.PRNGKey(1)))
  writer.write_histograms(6, {"hist/w": np.arange(10.0)})
  writer.close()
  events = read_events(str(tmp_path))
  hist_plugin, hist = events.pop("hist/w")[6]
  assert hist_plugin == "histograms" and hist.shape == (30, 3) and hist[:, 2].sum() == 10
  assert all(plugin == "scalars" and value.shape == ()
             for steps in events.values() for plugin, value in steps.values())
  scalars = {tag: {step: float(v) for step, (_, v) in steps.items()}
             for tag, steps in events.items()}
  for tag in ("train/loss", "train/mae", "train/grad_norm", "train/param_norm",
              "train/learning_rate"):
    assert sorted(scalars[tag]) == [2, 4, 6], tag
  assert sorted(scalars["eval/mae"]) == [3, 6]
  # Measured between logs; the interval to step 2 starts after step 1 (compile excluded).
  assert sorted(scalars["steps_per_sec"]) == [2, 4, 6]
  assert all(v > 0 for v in scalars["steps_per_sec"].values())
  # Logged values are means over the log interval: learning rate of updates 3 and 4.
  np.testing.assert_allclose(scalars["train/learning_rate"][4], 3e-2 - 2.5 * 2.7e-2 / 20,
                             rtol=1e-5)


def test_progress_line(monkeypatch):
  clock = {"t": 100.0}
  monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: clock["t"])
  progress = training.Progress(total_steps=100, log_every=10)
  assert progress.update(1, {"loss": 2.0}) is None  # starts the clock (compile excluded)
  clock["t"] = 103.0
  assert progress.update(10, {"loss": 0.5}) == "step 10/100 | loss 0.5 | 3 steps/s | ETA 30s"
  clock["t"] = 133.0
  assert progress.update(100, {"loss": 0.25}) == "step 100/100 | loss 0.25 | 3 steps/s | ETA 0s"
  assert metrics_lib.format_duration(72) == "1m12s"
  assert metrics_lib.format_duration(7500) == "2h05m"


def test_shard_batch_rejects_strings(mesh):
  batch = tw.batch_for_step(0)
  sharded = training.shard_batch(batch, mesh)
  assert sharded["x"].shape == (16, 4) and sharded["x"].sharding == training.data_sharding(mesh)
  with pytest.raises(TypeError, match=r"'episode_id'.*Drop such keys"):
    training.shard_batch({**batch, "episode_id": np.array([b"ep"] * 16, dtype=object)}, mesh)
  with pytest.raises(TypeError, match=r"'language'"):
    training.shard_batch({**batch, "language": np.array(["pick"] * 16)}, mesh)
  with pytest.raises(ValueError, match=r"scalar"):
    training.shard_batch({"n": np.float32(3.0)}, mesh)


def _wait_for(predicate, timeout, proc=None):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc is not None and proc.poll() is not None:
      return predicate()
    time.sleep(0.1)
  return predicate()


def test_sigterm_saves_at_a_step_boundary_exits_and_resumes(tmp_path):
  """A real SIGTERM to a training process: it saves the step it is at (none due: checkpoints
  every 1000 steps), exits with preemption.EXIT_CODE within 30 s, and the same command resumes
  from that step and finishes."""
  train_dir = tmp_path / "run"
  train_dir.mkdir()
  command = [sys.executable, "-m", "tests.training_worker", f"--train_dir={train_dir}",
             "--num_steps=60", "--step_seconds=0.1"]
  progress = train_dir / "progress"

  def steps_started():
    return len(progress.read_text().split()) if progress.exists() else 0

  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    assert _wait_for(lambda: steps_started() >= 5, 240, proc), proc.communicate()[1][-3000:]
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    seconds = time.time() - sent
  finally:
    if proc.poll() is None:  # a failed test leaves no process behind
      proc.kill()
  print(f"SIGTERM to exit: {seconds:.2f} s")
  assert proc.returncode == preemption.EXIT_CODE, stderr[-3000:]
  assert seconds < 30
  assert "SIGTERM: saving checkpoint at step" in stderr
  ckpt = training.Checkpointer(train_dir / "checkpoints", {**tw.CONFIG, "num_steps": 60})
  stopped_at = ckpt.latest_step()
  ckpt.close()
  # The step of the last batch taken, or the one before it (the signal came while fetching).
  assert stopped_at is not None and 5 <= stopped_at < 60
  assert stopped_at in (steps_started(), steps_started() - 1)

  rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert int((train_dir / "start_step").read_text()) == stopped_at
  ckpt = training.Checkpointer(train_dir / "checkpoints", {**tw.CONFIG, "num_steps": 60})
  assert ckpt.latest_step() == 60
  ckpt.close()


def test_sigterm_handler_is_the_loops_only_while_it_runs(mesh, tmp_path):
  """The loop's SIGTERM handler is restored afterwards, and a SIGTERM that arrives during the
  run (here: while a batch is fetched) stops it after a checkpoint of the step it reached."""
  tx = tw.make_tx()

  def outside_the_loop(signum, frame):
    raise RuntimeError("SIGTERM reached the handler installed outside the loop")

  def batches():
    source = sharded_batches(mesh)
    for step in range(10):
      if step == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # handled between bytecodes: sets the flag
      yield next(source)

  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)
  previous = signal.signal(signal.SIGTERM, outside_the_loop)
  try:
    with pytest.raises(preemption.Preempted, match="step 4"):
      training.train_loop(state=new_state(mesh, tx),
                          train_step=training.make_train_step(tw.loss_fn, tx, mesh),
                          batches=batches(), num_steps=10, checkpointer=ckpt)
    assert signal.getsignal(signal.SIGTERM) is outside_the_loop
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert ckpt.all_steps() == [4]
  ckpt.close()


@pytest.mark.parametrize("damaged", ["state/d", "config/metadata"])
def test_corrupt_latest_checkpoint_falls_back_to_the_step_before(mesh, tmp_path, caplog, damaged):
  """Truncated files in the newest step (the state's array data, or its config JSON): resuming
  restores the step before with a warning naming the damaged one, which is set aside so that
  training saves that step again."""
  tx = tw.make_tx()
  train_step = training.make_train_step(tw.loss_fn, tx, mesh)
  abstract = training.abstract_train_state(tw.init_params_fn(), tx, mesh)
  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)
  final = training.train_loop(state=new_state(mesh, tx), train_step=train_step,
                              batches=sharded_batches(mesh), num_steps=4, checkpointer=ckpt,
                              checkpoint_every=2, log_every=100)
  at_2 = ckpt.restore(abstract, step=2)
  ckpt.close()
  victim = tmp_path / "4" / damaged
  for path in (sorted(victim.iterdir()) if victim.is_dir() else [victim]):
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)

  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)
  restored = ckpt.restore(abstract)
  assert int(restored.step) == 2
  assert_trees_equal(restored, at_2)
  assert "Checkpoint step 4" in caplog.text and "unreadable" in caplog.text
  assert ckpt.all_steps() == [2] and (tmp_path / "4.corrupt").is_dir()
  resumed = training.train_loop(state=restored, train_step=train_step,
                                batches=sharded_batches(mesh, start=2), num_steps=4,
                                checkpointer=ckpt)
  ckpt.close()
  assert_trees_equal(resumed, final)
  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)
  assert ckpt.all_steps() == [2, 4]
  assert_trees_equal(ckpt.restore(abstract), final)
  ckpt.close()


def test_no_readable_checkpoint_is_one_clear_error(mesh, tmp_path):
  tx = tw.make_tx()
  checkpoint_at_step_1(mesh, tmp_path, tx)
  for path in sorted((tmp_path / "1" / "state" / "d").iterdir()):
    path.write_bytes(b"")
  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)
  with pytest.raises(training.CorruptCheckpointError,
                     match=r"can be read: step 1: ValueError.*\. Move the directory away to start "
                           r"afresh\.$"):
    ckpt.restore(training.abstract_train_state(tw.init_params_fn(), tx, mesh))
  assert ckpt.all_steps() == [1]  # nothing set aside
  ckpt.close()


def test_stacked_step_trains_each_run_as_it_would_train_alone(mesh):
  """Three runs (own init, own rng, own batches) updated together by one vmapped step end with
  the losses, metrics and params each gets from its own step, and `unstack_state` returns them."""
  tx = tw.make_tx()
  seeds, num_steps = (0, 1, 2), 4
  alone_step = training.make_train_step(tw.loss_fn, tx, mesh)
  stacked_step = training.make_train_step(tw.loss_fn, tx, mesh, stacked=True)

  def batch(seed, step):
    return tw.batch_for_step(100 * seed + step)  # every run its own data order

  alone = {}
  for seed in seeds:
    state = training.create_train_state(tw.init_params_fn(), tx, jax.random.PRNGKey(seed), mesh)
    losses = []
    for step in range(num_steps):
      state, metrics = alone_step(state, training.shard_batch(batch(seed, step), mesh))
      losses.append(float(metrics["loss"]))
    alone[seed] = (jax.device_get(state), losses)

  state = training.stack_states([
      training.create_train_state(tw.init_params_fn(), tx, jax.random.PRNGKey(seed), mesh)
      for seed in seeds])
  losses = []
  for step in range(num_steps):
    stacked_batch = jax.tree.map(lambda *b: np.stack(b), *[batch(s, step) for s in seeds])
    state, metrics = stacked_step(state, stacked_batch)
    assert metrics["loss"].shape == (len(seeds),)
    losses.append(np.asarray(metrics["loss"]))
  losses = np.stack(losses, axis=1)  # (seeds, steps)
  assert not np.allclose(losses[0], losses[1])  # the runs differ: init, rng and data are theirs
  for i, seed in enumerate(seeds):
    expected_state, expected_losses = alone[seed]
    np.testing.assert_allclose(losses[i], expected_losses, rtol=1e-6)
    run = jax.device_get(training.unstack_state(state, i))
    assert int(run.step) == num_steps
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(expected_state.params),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

"""Tiny MLP regression trained with `hilam_jax.training`; shared by tests/test_training.py.

Run as a script it trains on every visible device and writes the results, so the test can
compare a forced 8-host-device run (XLA_FLAGS=--xla_force_host_platform_device_count=8, which
must be set before jax is imported, hence the subprocess) against a 1-device run:

  python -m tests.training_worker --out=/tmp/result.npz [--checkpoint_dir=/tmp/ckpt]

With --train_dir it is a resumable training run instead (`train_loop` with a checkpointer, as a
launch script: `preemption.exit_on_preemption`), slowed to --step_seconds per batch so that a
test can signal it mid-run; it logs each step it starts to <train_dir>/progress and the step it
resumed from to <train_dir>/start_step (".<process index>" appended in a multi-process run):

  python -m tests.training_worker --train_dir=/tmp/run --num_steps=60 --step_seconds=0.1

--final_seconds sleeps after the loop, as a trainer's final evaluation takes time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hilam_jax import preemption
from hilam_jax import training

GLOBAL_BATCH, FEATURES, HIDDEN = 16, 4, 32
CONFIG = {"model": {"hidden": HIDDEN}, "optimizer": {"lr": 3e-2}, "num_steps": 5}


class MLP(nn.Module):
  hidden: int = HIDDEN

  @nn.compact
  def __call__(self, x):  # x: (B, F) -> (B,)
    x = nn.tanh(nn.Dense(self.hidden)(x))
    return nn.Dense(1)(x)[:, 0]


def make_tx(lr: float = 3e-2) -> optax.GradientTransformation:
  schedule = optax.linear_schedule(lr, lr / 10, transition_steps=20)
  return optax.inject_hyperparams(optax.adam)(learning_rate=schedule)


def init_params_fn(hidden: int = HIDDEN):
  return lambda rng: MLP(hidden).init(rng, jnp.zeros((1, FEATURES)))["params"]


def loss_fn(params, batch, rng):
  """MSE with small input noise drawn from the step rng (so rng handling is exercised)."""
  x = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)  # (B, F)
  pred = MLP().apply({"params": params}, x)  # (B,)
  loss = jnp.mean((pred - batch["y"]) ** 2)
  return loss, {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}


def batch_for_step(step: int) -> dict[str, np.ndarray]:
  """The global batch of a step (deterministic in the step: resume-safe)."""
  rs = np.random.RandomState(step)
  x = rs.normal(size=(GLOBAL_BATCH, FEATURES)).astype(np.float32)
  return {"x": x, "y": np.sin(x).sum(-1).astype(np.float32)}


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's slice of a global batch (all of it in a single-process run)."""
  rows = training.per_process_batch(GLOBAL_BATCH)
  start = jax.process_index() * rows
  return {k: v[start:start + rows] for k, v in batch.items()}


def _host_value(x) -> np.ndarray:
  """A replicated (possibly multi-process) array as numpy, from this process's first shard."""
  return np.asarray(x.addressable_shards[0].data)


def run(mesh, num_steps: int = 5, checkpoint_dir: str | None = None) -> dict:
  """Trains `num_steps` steps on `mesh` (each process feeding its rows of every global batch);
  returns losses, final params and placement facts."""
  tx = make_tx()
  state = training.create_train_state(init_params_fn(), tx, jax.random.PRNGKey(0), mesh)
  train_step = training.make_train_step(loss_fn, tx, mesh)
  losses, lrs, info = [], [], {}
  for step in range(num_steps):
    batch = training.shard_batch(local_rows(batch_for_step(step)), mesh)
    if step == 0:
      x = batch["x"]
      info = {"device_count": jax.device_count(), "mesh_size": int(mesh.devices.size),
              "process_count": jax.process_count(), "process_index": jax.process_index(),
              "local_device_count": jax.local_device_count(),
              "batch_num_shards": len(x.addressable_shards),
              "batch_shard_rows": sorted({s.data.shape[0] for s in x.addressable_shards}),
              "batch_shard_devices": len({s.device for s in x.addressable_shards}),
              "params_replicated": all(p.sharding.is_fully_replicated
                                       for p in jax.tree.leaves(state.params)),
              "params_num_devices": len(jax.tree.leaves(state.params)[0].sharding.device_set)}
    state, metrics = train_step(state, batch)
    losses.append(float(_host_value(metrics["loss"])))
    lrs.append(float(_host_value(metrics["learning_rate"])))
  if checkpoint_dir:
    ckpt = training.Checkpointer(checkpoint_dir, CONFIG)
    ckpt.save(num_steps, state, force=True)
    ckpt.close()
  flat = {jax.tree_util.keystr(p): _host_value(v)
          for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  return {"losses": np.asarray(losses), "lrs": np.asarray(lrs), "params": flat, "info": info,
          "step": int(state.step)}


def train_resumable(train_dir: str, num_steps: int, step_seconds: float,
                    final_seconds: float = 0.0) -> int:
  """Trains (or resumes) to `num_steps` in `train_dir`; returns the final step."""
  mesh = training.make_mesh()
  tx = make_tx()
  checkpointer = training.Checkpointer(os.path.join(train_dir, "checkpoints"),
                                       {**CONFIG, "num_steps": num_steps})  # saves every 1000
  state = training.create_train_state(init_params_fn(), tx, jax.random.PRNGKey(0), mesh)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
  start = int(state.step)
  suffix = "" if jax.process_count() == 1 else f".{jax.process_index()}"
  with open(os.path.join(train_dir, "start_step" + suffix), "w") as f:
    f.write(str(start))

  def batches():
    for step in range(start, num_steps):
      time.sleep(step_seconds)
      with open(os.path.join(train_dir, "progress" + suffix), "a") as f:
        f.write(f"{step}\n")
      yield training.shard_batch(local_rows(batch_for_step(step)), mesh)

  state = training.train_loop(state=state, train_step=training.make_train_step(loss_fn, tx, mesh),
                              batches=batches(), num_steps=num_steps, checkpointer=checkpointer,
                              log_every=10)
  time.sleep(final_seconds)  # what follows a trainer's loop (its final evaluation)
  checkpointer.close()
  return int(state.step)


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--num_steps", type=int, default=5)
  parser.add_argument("--checkpoint_dir", default=None)
  parser.add_argument("--train_dir", default=None)
  parser.add_argument("--step_seconds", type=float, default=0.0)
  parser.add_argument("--final_seconds", type=float, default=0.0,
                      help="Sleep after the training loop (a trainer's final evaluation).")
  parser.add_argument("--fail_process", type=int, default=None,
                      help="This process index raises once the job is up (a crash in one "
                      "process of a multi-process run).")
  # A multi-process run (hilam_jax.training.distributed): all three or none.
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  args = parser.parse_args(argv[1:])
  from hilam_jax.training import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  if args.fail_process is not None and jax.process_index() == args.fail_process:
    raise RuntimeError(f"process {args.fail_process} fails on purpose (--fail_process)")
  if args.train_dir:
    train_resumable(args.train_dir, args.num_steps, args.step_seconds, args.final_seconds)
    return
  mesh = training.make_mesh()
  result = run(mesh, args.num_steps, args.checkpoint_dir)
  try:  # a per-process batch that the local devices cannot split evenly
    rows = training.per_process_batch(GLOBAL_BATCH) - 1
    training.shard_batch({"x": np.zeros((rows, FEATURES), np.float32)}, mesh)
    result["info"]["indivisible_error"] = None
  except ValueError as e:
    result["info"]["indivisible_error"] = str(e)
  np.savez(args.out, losses=result["losses"], lrs=result["lrs"],
           info=json.dumps(result["info"]), step=result["step"],
           **{"param" + k: v for k, v in result["params"].items()})


if __name__ == "__main__":
  preemption.exit_on_preemption(main)(sys.argv)

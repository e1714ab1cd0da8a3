"""The trainer hyper-parameters every training config carries (LAM, skill model, policies)."""
from __future__ import annotations

import ml_collections


def trainer_config(*, batch_size: int, num_steps: int, learning_rate: float, warmup_steps: int,
                   eval_every: int, num_eval_batches: int, checkpoint_every: int,
                   log_every: int = 50, weight_decay: float = 1e-4, grad_clip: float = 1.0,
                   compute_dtype: str = "float32", seed: int = 0) -> ml_collections.ConfigDict:
  """The shared fields of a training config, to `update` a config with.

  Args:
    batch_size: global batch; split over processes and devices.
    num_steps: optimizer steps (a resumed run may raise it).
    learning_rate, warmup_steps, weight_decay, grad_clip: the optimizer
      (`hilam_jax.training.make_optimizer`: AdamW, linear warmup then cosine decay to 10%,
      global-norm clipping).
    eval_every, num_eval_batches, checkpoint_every, log_every: intervals in steps, and the
      validation batches of one evaluation.
    compute_dtype: "float32" or "bfloat16" compute (parameters and optimizer state stay
      float32: `hilam_jax.training.precision`); bfloat16 is for TPUs / recent GPUs, slower on
      a CPU.
    seed: the run's seed.
  """
  return ml_collections.ConfigDict({
      "seed": seed, "batch_size": batch_size, "compute_dtype": compute_dtype,
      "num_steps": num_steps, "learning_rate": learning_rate, "warmup_steps": warmup_steps,
      "weight_decay": weight_decay, "grad_clip": grad_clip, "log_every": log_every,
      "eval_every": eval_every, "num_eval_batches": num_eval_batches,
      "checkpoint_every": checkpoint_every})

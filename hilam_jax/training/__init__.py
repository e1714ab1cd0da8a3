"""Shared training core reused unchanged by every trainer (LAM, skill model, policies).

mesh         one 1-D "data" mesh over all devices; shardings; per-process batch -> global arrays
train_state  pure `TrainState`, sharded init, jitted train/eval steps (explicit shardings)
checkpoint   orbax composite checkpoints (state, params, config, versions, extra), strict restore
metrics      TensorBoard writer (process 0) and a progress line with steps/s and ETA
loop         `train_loop` with NaN guard, periodic eval/checkpoints, save on interrupt and
             on SIGTERM (preemption)
workdir_lock one run per workdir (`lock_workdir`, released by `releases_workdir_locks`)
"""
from hilam_jax.training.checkpoint import (CheckpointMismatchError, Checkpointer,
                                           ChecksumMismatchError, ConfigMismatchError, CorruptCheckpointError,
                                           load_checkpoint_config, params_sha256,
                                           restore_params)
from hilam_jax.training.loop import (NonFiniteError, check_finite, check_run_config, finish_run,
                                     run_eval, run_training, train_loop)
from hilam_jax.training.mesh import (data_sharding, make_mesh, per_process_batch,
                                     replicated_sharding, shard_batch, shard_batches)
from hilam_jax.training.metrics import EarlyStopping, MetricWriter, Progress
from hilam_jax.training.train_state import (TrainState, abstract_train_state, create_train_state,
                                            make_eval_step, make_optimizer, make_train_step,
                                            stack_states, unstack_state, unwrap_params)
from hilam_jax.training.workdir_lock import (LOCK_NAME, WorkdirLockedError, lock_workdir,
                                             release_workdir, releases_workdir_locks)

__all__ = [
    "CheckpointMismatchError", "Checkpointer", "EarlyStopping", "ChecksumMismatchError", "ConfigMismatchError", "CorruptCheckpointError",
    "MetricWriter",
    "NonFiniteError", "Progress", "TrainState", "abstract_train_state", "check_finite",
    "check_run_config",
    "create_train_state", "data_sharding", "finish_run", "load_checkpoint_config",
    "make_eval_step", "make_mesh", "make_optimizer", "make_train_step", "params_sha256",
    "stack_states", "unstack_state",
    "per_process_batch", "replicated_sharding",
    "restore_params", "run_eval", "run_training", "shard_batch", "shard_batches", "train_loop",
    "unwrap_params", "LOCK_NAME", "WorkdirLockedError", "lock_workdir", "release_workdir",
    "releases_workdir_locks",
]

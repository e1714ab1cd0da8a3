"""The pure train state and the jitted train/eval steps shared by every trainer.

Everything a step needs is an argument: the state pytree (step, params, optimizer state, rng)
and the batch. The per-step rng is `fold_in(state.rng, state.step)`, so a resumed run draws the
same random numbers as an uninterrupted one, and nothing reads module-level globals.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from hilam_jax.training import augment as augment_lib
from hilam_jax.training import mesh as mesh_lib
from hilam_jax.training import precision

Params = Any
Batch = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[Params, Batch, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


def unwrap_params(params: Any) -> Any:
  """Accepts the inner params dict or a {"params": ...} variables dict; returns the inner one."""
  if isinstance(params, (dict, flax.core.FrozenDict)) and set(params.keys()) == {"params"}:
    return params["params"]
  return params


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, replicated over the mesh.

  Attributes:
    step: int32 scalar, number of optimizer updates applied so far.
    params: model parameters.
    opt_state: optax optimizer state.
    rng: raw uint32 PRNG key data (shape (2,) for threefry). Stored raw rather than as a typed
      key so that orbax checkpoints it like any other array.
  """
  step: jax.Array
  params: Params
  opt_state: optax.OptState
  rng: jax.Array

  def step_rng(self) -> jax.Array:
    """The rng of the update about to be made from this state."""
    return jax.random.fold_in(self.rng, self.step)


def _raw_key(rng: jax.Array) -> np.ndarray:
  """Typed or raw PRNG key -> raw key data on the host (same value on every process)."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return np.asarray(rng)


def _init_fn(init_params_fn: Callable[[jax.Array], Params], tx: optax.GradientTransformation):
  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = init_params_fn(params_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=state_rng)
  return init


def abstract_train_state(init_params_fn: Callable[[jax.Array], Params],
                         tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state, without allocating it.

  The restore target for `Checkpointer.restore`.
  """
  abstract = jax.eval_shape(_init_fn(init_params_fn, tx), jax.ShapeDtypeStruct((2,), jnp.uint32))
  replicated = mesh_lib.replicated_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      abstract)


def create_train_state(init_params_fn: Callable[[jax.Array], Params],
                       tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh) -> TrainState:
  """Initializes params and optimizer state directly in their replicated placement.

  `jax.eval_shape` gives the state's structure without computing it; the real initialization
  then runs under `jax.jit` with replicated `out_shardings`, so the params are never
  materialized on one device first and then copied.

  Args:
    init_params_fn: rng -> params (e.g. `lambda r: model.init(r, dummy)["params"]`).
    tx: the optimizer.
    rng: PRNG key (typed or raw); must be the same on every process. It is split into the
      params-init key and the state's training key.
    mesh: the training mesh.

  Returns:
    A `TrainState` at step 0 with every leaf replicated over `mesh`.
  """
  init = _init_fn(init_params_fn, tx)
  rng = _raw_key(rng)
  abstract = jax.eval_shape(init, jax.ShapeDtypeStruct(rng.shape, rng.dtype))
  replicated = mesh_lib.replicated_sharding(mesh)
  out_shardings = jax.tree.map(lambda _: replicated, abstract)
  return jax.jit(init, in_shardings=replicated, out_shardings=out_shardings)(rng)


def learning_rate_from_opt_state(opt_state: optax.OptState) -> jax.Array | None:
  """The learning rate stored by `optax.inject_hyperparams`, else None.

  Looks for a leaf at `<...>.hyperparams['learning_rate']` (not `optax.tree_utils.tree_get`,
  which also matches the schedule's own state under `hyperparams_states` and then refuses).
  If several injected optimizers are chained, the first one's rate is reported.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    if (len(path) >= 2 and path[-1] == jax.tree_util.DictKey("learning_rate")
        and path[-2] == jax.tree_util.GetAttrKey("hyperparams")):
      return jnp.asarray(leaf, jnp.float32)
  return None


def make_optimizer(config: Any, *, update_scale: Callable[[Params], Params] | None = None
                   ) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay to 10% and global-norm clipping (every trainer).

  Reads config.learning_rate, warmup_steps, num_steps (or `schedule_steps` if set: the schedule
  of a longer run, stopped early), weight_decay and grad_clip. The rate is injected as a
  hyperparameter so that `make_train_step` can report it.

  update_scale: optional params -> pytree of per-leaf multipliers of the final updates (weight
    decay included), e.g. a lower rate for a pretrained body than for new heads; 0 freezes a
    leaf (its Adam moments are still tracked, so a run can change nothing else and resume).
  """
  total = config.get("schedule_steps", None) or config.num_steps
  if total < config.num_steps:
    raise ValueError(f"schedule_steps={total} is shorter than num_steps={config.num_steps}")
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, max(total, config.warmup_steps + 1),
      end_value=config.learning_rate * 0.1)
  parts = [optax.clip_by_global_norm(config.grad_clip),
           optax.inject_hyperparams(optax.adamw)(learning_rate=schedule,
                                                weight_decay=config.weight_decay)]
  if update_scale is not None:
    def scale(updates, state, params=None):
      del params
      return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates,
                          update_scale(updates)), state
    parts.append(optax.GradientTransformation(lambda params: optax.EmptyState(), scale))
  return optax.chain(*parts)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, mesh: Mesh, *,
                    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
                    augment_fn: Callable[[Batch, jax.Array], Batch] | None = None,
                    compute_dtype: str = "float32", stacked: bool = False
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Builds the jitted, data-parallel update `(state, batch) -> (state, metrics)`.

  With `stacked`, several independent runs of one model (e.g. the seeds of one experiment cell)
  update together in one program: every leaf of the state (`stack_states`) and of the batch has
  a leading run axis, the update is `jax.vmap` of the single-run update, and each run gets the
  update it would get alone (its own params, optimizer state, rng and batch), up to float
  rounding. The batch is split over the mesh along its second (per-run batch) axis, and every
  metric has the leading run axis.

  Args:
    loss_fn: (params, batch, rng) -> (scalar loss, dict of scalar metrics). It sees the global
      batch (a mean over its leading axis is the global mean: XLA inserts the cross-device
      reduction) and the per-step rng `fold_in(state.rng, state.step)`.
    tx: the optimizer the state was created with.
    mesh: the training mesh.
    learning_rate_fn: optional schedule step -> lr, reported as metric "learning_rate". Without
      it the rate is read from the optimizer state when `optax.inject_hyperparams` was used.
    augment_fn: optional (batch, rng) -> batch run first inside the step (on-device
      augmentation, `hilam_jax.training.augment`), with rng `fold_in(step rng, AUGMENT_STREAM)`;
      the loss still receives the step rng itself.
    compute_dtype: "float32" or "bfloat16": the loss (forward and backward) computes in it,
      parameters and optimizer state stay float32 (`precision.compute_in`).

  Returns:
    step_fn(state, batch) -> (new state, metrics). The state is donated: do not use the old
    state after the call. metrics holds loss_fn's metrics plus "loss", "grad_norm" (global norm
    of the gradients), "param_norm" (of the updated params) and, if obtainable,
    "learning_rate" (the one used for this update). All metrics are replicated scalars.
  """
  replicated = mesh_lib.replicated_sharding(mesh)
  loss_fn = precision.compute_in(compute_dtype, loss_fn)

  def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = state.step_rng()
    if augment_fn is not None:
      batch = augment_fn(batch, jax.random.fold_in(rng, augment_lib.AUGMENT_STREAM))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params))
    if learning_rate_fn is not None:
      metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    else:
      # inject_hyperparams stores the rate it used for this very update in the new state.
      lr = learning_rate_from_opt_state(opt_state)
      if lr is not None:
        metrics["learning_rate"] = lr
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  if stacked:
    batch_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, mesh_lib.DATA_AXIS))
    return jax.jit(jax.vmap(step_fn), in_shardings=(replicated, batch_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  return jax.jit(step_fn,
                 in_shardings=(replicated, mesh_lib.data_sharding(mesh)),
                 out_shardings=(replicated, replicated),
                 donate_argnums=0)


def stack_states(states: list[TrainState]) -> TrainState:
  """Runs' states (one structure) -> one state whose leaves have a leading run axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def unstack_state(stacked: TrainState, index: int) -> TrainState:
  """Run `index`'s state of a `stack_states` result (e.g. to checkpoint it in its own workdir)."""
  return jax.tree.map(lambda leaf: leaf[index], stacked)


def make_eval_step(metrics_fn: Callable[[Params, Batch, jax.Array], Mapping[str, jax.Array]],
                   mesh: Mesh, *, compute_dtype: str = "float32"
                   ) -> Callable[[Params, Batch, jax.Array], Metrics]:
  """Jits `metrics_fn(params, batch, rng) -> dict of scalars` with the training shardings.

  params and rng replicated, batch split along its leading axis, metrics replicated. Nothing is
  donated (the params are the live training params). compute_dtype as in `make_train_step`.
  """
  replicated = mesh_lib.replicated_sharding(mesh)
  return jax.jit(precision.compute_in(compute_dtype, metrics_fn),
                 in_shardings=(replicated, mesh_lib.data_sharding(mesh), replicated),
                 out_shardings=replicated)

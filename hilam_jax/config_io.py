"""One strict dict round trip for the project's frozen-dataclass model configs.

A config is stored next to every checkpoint as plain JSON and rebuilt from it: `to_dict` turns
tuples into lists (and nested configs into dicts), `from_dict` refuses unknown keys, so a stored
config that no longer matches the code is an error instead of a silent drift.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def _plain(value: Any) -> Any:
  if isinstance(value, tuple):
    return [_plain(v) for v in value]
  if isinstance(value, DictConfig):
    return value.to_dict()
  return value


class DictConfig:
  """Mixin for `@dataclasses.dataclass(frozen=True)` configs: strict `to_dict` / `from_dict`.

  Subclasses with nested configs override `_fields_from_dict` to rebuild them.
  """

  def to_dict(self) -> dict[str, Any]:
    """Plain-JSON dict (lists for tuples, dicts for nested configs); `from_dict` inverts it."""
    return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]):
    """Builds a config from a plain dict; unknown keys are an error (no silent drift)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**cls._fields_from_dict(dict(config)))

  @classmethod
  def _fields_from_dict(cls, config: dict[str, Any]) -> dict[str, Any]:
    return config

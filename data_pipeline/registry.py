"""Registry of per-dataset standardize functions (raw RLDS episode -> common schema).

A name is registered exactly (`bridge`) or as a prefix pattern ending in `*` (`babyai_*`); exact
names win over patterns, longer patterns over shorter. The standardize modules register
themselves on import; `data_pipeline.standardize` imports all of them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from data_pipeline.schema import UnknownDatasetError

StandardizeFn = Callable[[Mapping[str, Any]], dict]

_REGISTRY: dict[str, StandardizeFn] = {}


def register(*names: str) -> Callable[[StandardizeFn], StandardizeFn]:
  """Decorator: registers a standardize function under exact names or `prefix*` patterns."""

  def decorator(fn: StandardizeFn) -> StandardizeFn:
    for name in names:
      if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"dataset name {name!r} is already registered")
      _REGISTRY[name] = fn
    return fn

  return decorator


def get_standardize_fn(name: str) -> StandardizeFn:
  """Returns the standardize function for dataset `name`; raises UnknownDatasetError."""
  import data_pipeline.standardize  # noqa: F401  (registers the built-in datasets)

  if name in _REGISTRY:
    return _REGISTRY[name]
  patterns = sorted((p for p in _REGISTRY if p.endswith("*")), key=len, reverse=True)
  for pattern in patterns:
    if name.startswith(pattern[:-1]):
      return _REGISTRY[pattern]
  raise UnknownDatasetError(
      f"unknown dataset name {name!r}; registered: {registered_names()}. "
      "Register a standardize function with data_pipeline.registry.register(name).")


def registered_names() -> list[str]:
  import data_pipeline.standardize  # noqa: F401

  return sorted(_REGISTRY)

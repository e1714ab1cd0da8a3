"""World adapters: what the main job (`hilam_jax/experiment.py`) needs to know about a benchmark.

A world (`base.World`) holds a benchmark's static facts (action space and the policy's action
head, ignored action, proprio, cameras, instruction field, episode cap) and its three verbs: make
the datasets of a data spec (`generate`), check that the evaluation simulator renders as the
demonstrations were recorded (`check_settings`) and evaluate a test-time policy (`evaluate`).
The experiment picks one by `config.world` and calls only that interface.

  world = worlds.get_world("babyai")

Adding a world: one module here defining `WORLD` (a `base.World` subclass instance), and one
line in `WORLDS`. Simulators and harnesses are imported inside the methods, so that a world's
facts are known without its (optional) simulator installed.
"""
from __future__ import annotations

import importlib

from hilam_jax.worlds.base import ActionSpace, World  # noqa: F401  (the interface)

# config.world -> module of hilam_jax.worlds defining WORLD.
WORLDS = {
    "babyai": "hilam_jax.worlds.babyai",
    "metaworld": "hilam_jax.worlds.metaworld",
    "libero": "hilam_jax.worlds.libero",
}


def get_world(name: str) -> World:
  """The world adapter called `name` (a key of WORLDS); refuses an unknown name."""
  if name not in WORLDS:
    raise ValueError(f"unknown world {name!r}; worlds: {', '.join(sorted(WORLDS))}")
  world = importlib.import_module(WORLDS[name]).WORLD
  if world.name != name:
    raise ValueError(f"{WORLDS[name]}.WORLD is named {world.name!r}, registered as {name!r}")
  return world

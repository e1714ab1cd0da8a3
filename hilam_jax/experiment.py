"""The main job: everything the README's first command runs, callable from tests and notebooks.

Today: generate the default BabyAI benchmark dataset and summarize it. Later stages (latent
action model, skill model, policies) append their steps here.
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import logging

from data_pipeline import summary
from data_pipeline.generators import babyai
from hilam_jax import run_info


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs the pipeline into `workdir` (datasets under `<workdir>/data`); returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  run_info.write_run_info(workdir, config)
  generation = babyai.generate(config.babyai, os.path.join(workdir, "data"))
  logging.info("dataset at %s (%.2f episodes/s)", generation["dataset_dir"],
               generation["episodes_per_second"])
  out_dir = os.path.join(workdir, "summary")
  result = summary.write_summary(generation["dataset_dir"], out_dir)
  result["generation"] = generation
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(result, f, indent=1)
  for split in ("train", "val"):
    if split in result:
      s = result[split]
      logging.info("%s: %d episodes, %d frames, length mean %.1f (min %d, max %d), subtasks "
                   "per episode %s", split, s["episodes"], s["frames"],
                   s["episode_length"]["mean"], s["episode_length"]["min"],
                   s["episode_length"]["max"], s.get("subtasks_per_episode"))
  logging.info("summary: %s", os.path.join(out_dir, "summary.md"))
  return result

"""Meta-World v3: scripted-expert episodes of a set of tasks, continuous actions.

Data: `data_pipeline/generators/metaworld.py` (a spec = an
`experiments/configs/generate_metaworld.py` config: tasks, episodes per task and split, image
size, camera; recorded in the dataset's generation_info.json). Standardized
(`data_pipeline/standardize/metaworld.py`): one camera `image_primary` (the generator's camera,
rotated upright), proprio = hand xyz + gripper opening (4), actions = hand Δxyz + gripper
effort (4) in [-1, 1]. Episode cap: Meta-World's 500 steps.
Level: "" (every task of the demos) or a comma-separated subset of the demos' tasks.

Evaluation: `hilam_jax.evaluation.metaworld.evaluate_metaworld` on held-out seeds (split "test"
hashed into the seed), in spawned MuJoCo workers, rendered with the demos' camera and image size
(fast rendering, as the generator records). eval.num_episodes is spread over the tasks
(rounded up per task); eval.num_envs environments in `eval.num_sim_workers` (default 2) workers.
Requires the `metaworld` package (imported by the harness only).
"""
from __future__ import annotations

import math
from typing import Any

from hilam_jax.worlds import base


class MetaWorldWorld(base.World):
  """Meta-World v3 tasks with their scripted experts."""

  def generate(self, spec: Any, data_dir: str) -> dict[str, Any]:
    from data_pipeline.generators import metaworld  # pylint: disable=g-import-not-at-top
    return metaworld.generate(spec, data_dir)

  def check_settings(self, demos_dir: str, level: str) -> dict[str, Any]:
    recorded = base.read_generation_config(demos_dir)
    tasks = [t.strip() for t in level.split(",") if t.strip()] if level else list(
        recorded["tasks"])
    unseen = sorted(set(tasks) - set(recorded["tasks"]))
    if unseen:
      raise ValueError(f"evaluation tasks {unseen} are not in the demos {demos_dir} "
                       f"(tasks {list(recorded['tasks'])})")
    if not recorded.get("fast_render", True):
      raise ValueError(f"{demos_dir} was rendered without fast_render; the evaluation harness "
                       "renders with it: the policy would see frames unlike its training data")
    return {"tasks": tasks, "image_size": int(recorded["image_size"]),
            "camera": recorded["camera"]}

  def evaluate(self, policy: Any, *, level: str, settings: dict[str, Any],
               eval_config: dict[str, Any], video_dir: str) -> dict[str, Any]:
    # pylint: disable-next=g-import-not-at-top
    from hilam_jax.evaluation import metaworld as metaworld_eval
    del level  # in settings["tasks"]
    e = eval_config
    size = base.policy_image_size(policy)
    if size is not None and size != (settings["image_size"],) * 2:
      raise ValueError(f"the policy was trained on {size} images, the demos are "
                       f"{settings['image_size']} px: set policy.image_size to the demos' size")
    num_workers = max(1, min(int(e.get("num_sim_workers", 2)), e["num_envs"]))
    return metaworld_eval.evaluate_metaworld(
        policy, settings["tasks"],
        episodes_per_task=math.ceil(e["num_episodes"] / len(settings["tasks"])),
        num_workers=num_workers, envs_per_worker=math.ceil(e["num_envs"] / num_workers),
        max_steps=e["max_steps"] or self.episode_cap, seed=e["seed"], video_dir=video_dir,
        num_videos=e["num_videos"], image_size=settings["image_size"],
        camera=settings["camera"]).to_dict()


WORLD = MetaWorldWorld(
    name="metaworld",
    action=base.ActionSpace("continuous", 4, low=-1.0, high=1.0),  # hand Δxyz, gripper effort
    proprio_dim=4,  # hand xyz + gripper opening (standardize/metaworld.py PROPRIO_DIM)
    cameras=("image_primary",),
    episode_cap=500,  # Meta-World's own episode limit
    simulator_modules=("metaworld",),
)

"""BabyAI (minigrid): the main job's world.

Data: the bot's episodes from `data_pipeline/generators/babyai.py` (a spec = a
`experiments/configs/generate_babyai.py` config; the level, view and tile size are recorded in the
dataset's generation_info.json). Actions: the 7 minigrid actions (left, right, forward, pickup,
drop, toggle, done), categorical; `done` (6) is only the placeholder of an episode's terminal step
(`data_pipeline/sim/babyai.py` ACTION_NAMES, DONE_ACTION), never a target. Proprio: one-hot facing
direction (4). One camera, `image_primary`: the view the dataset was generated with. Level: a
registered BabyAI level ("BabyAI-UnlockLocal-v0"), the one the demos were generated on; its own
step limit is the episode cap unless eval.max_steps is set.

Evaluation: `hilam_jax.evaluation.babyai.evaluate_babyai` on held-out seeds, rendered exactly as
the demos (`check_render_settings`). Actions are sampled from the policy with the evaluation seed
(BabyAI's convention for imitation policies: greedy argmax can repeat an action that changes
nothing until the step limit), or greedy with eval.actions = "argmax".
"""
from __future__ import annotations

from typing import Any

from hilam_jax.worlds import base


class BabyAIWorld(base.World):
  """BabyAI: minigrid levels solved by the shipped bot."""

  def generate(self, spec: Any, data_dir: str) -> dict[str, Any]:
    from data_pipeline.generators import babyai  # pylint: disable=g-import-not-at-top
    return babyai.generate(spec, data_dir)

  def check_settings(self, demos_dir: str, level: str) -> dict[str, Any]:
    from data_pipeline.sim import babyai as sim  # pylint: disable=g-import-not-at-top
    from hilam_jax.evaluation import babyai as babyai_eval  # pylint: disable=g-import-not-at-top
    # Render exactly as the demonstrations were generated (view, tile size).
    render = sim.render_settings(demos_dir)
    babyai_eval.check_render_settings(demos_dir, level, render["view"], render["tile_size"])
    return render

  def evaluate(self, policy: Any, *, level: str, settings: dict[str, Any],
               eval_config: dict[str, Any], video_dir: str) -> dict[str, Any]:
    from hilam_jax.evaluation import babyai as babyai_eval  # pylint: disable=g-import-not-at-top
    e = eval_config
    return babyai_eval.evaluate_babyai(
        policy, level, num_episodes=e["num_episodes"], num_envs=e["num_envs"], seed=e["seed"],
        max_steps=e["max_steps"], view=settings["view"], tile_size=settings["tile_size"],
        video_dir=video_dir, num_videos=e["num_videos"]).to_dict()


WORLD = BabyAIWorld(
    name="babyai",
    # 7 minigrid actions; 6 = 'done', the terminal step's placeholder (sim.DONE_ACTION).
    action=base.ActionSpace("categorical", 7, ignore=6),
    proprio_dim=4,  # one-hot facing direction (sim.NUM_DIRECTIONS)
    cameras=("image_primary",),
    episode_cap=None,  # the level's own (env.unwrapped.max_steps)
    simulator_modules=("minigrid",),
)

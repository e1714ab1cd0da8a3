"""Meta-World v3 scripted-expert dataset (RLDS) for `experiments/generate_metaworld.py`.

Variants:
  default  six tasks with mapped expert phases, 45 train + 5 val episodes each (300 episodes).
  tiny     two short pick-place episodes in train and one in val, for tests and smoke runs.

Launch commands (from the repo root):

  python -m experiments.generate_metaworld \
      --config=experiments/configs/generate_metaworld.py:default --data_dir=./data

  python -m experiments.generate_metaworld \
      --config=experiments/configs/generate_metaworld.py:tiny --data_dir=/tmp/mw_data

  # more workers, fewer tasks (fields are overridable; a rerun resumes finished shards):
  python -m experiments.generate_metaworld \
      --config=experiments/configs/generate_metaworld.py:default \
      --config.num_workers=4 --config.tasks='("push-v3","pick-place-v3")' --data_dir=./data

The dataset lands in `<data_dir>/<name>/<version>` and reads with
`data_pipeline.reader.read_trajectories(that_dir)` (standardize function `metaworld_*`).
"""
import ml_collections


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "metaworld_experts"  # snake case; must start with "metaworld_"
  config.version = "1.0.0"
  # Meta-World v3 env names; tasks outside metaworld_sim.PHASE_SPECS get a single phase.
  config.tasks = ("reach-v3", "push-v3", "pick-place-v3", "drawer-open-v3", "button-press-v3",
                  "door-open-v3")
  config.episodes_per_task = ml_collections.ConfigDict({"train": 45, "val": 5})
  config.episodes_per_shard = 10
  config.seed = 0
  config.image_size = 64
  config.camera = "corner2"
  # Shadows, reflections and MSAA off: ~12x faster rendering on CPU (llvmpipe) at 64x64.
  config.fast_render = True
  config.max_steps = 500           # Meta-World's own episode limit
  config.steps_after_success = 5   # keep a few steps of the solved scene
  config.min_phase_steps = 3       # debounce: a phase lasts at least this many steps
  config.max_attempts = 20         # seeds tried per episode slot before giving up
  config.num_workers = 2           # spawned simulation processes (does not change the data)

  if arg == "tiny":
    config.name = "metaworld_tiny"
    config.tasks = ("pick-place-v3",)
    config.episodes_per_task = ml_collections.ConfigDict({"train": 2, "val": 1})
    config.episodes_per_shard = 2
    config.max_steps = 150
    config.steps_after_success = 2
    config.num_workers = 1
  elif arg != "default":
    raise ValueError(f"unknown variant {arg!r}; expected 'default' or 'tiny'")
  return config

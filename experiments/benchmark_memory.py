"""Benchmark: peak memory (RSS) of labeling and skill training against the size of the corpus.

Not a test: it prints measured figures, all from one run on this machine.

  python -m experiments.benchmark_memory --out_dir=/tmp/benchmark_memory
  python -m experiments.benchmark_memory --small        # seconds: the tests' size

The corpus is synthetic, not simulated: BabyAI would take hours for 10x the main job's video.
`data_pipeline.rlds_writer` writes it in the layout and features of the BabyAI video
(`data_pipeline.generators.babyai.episode_features(action_free=True)`, registered name
`babyai_*`): `--base_episodes` train episodes (default 10,000, the main job's video) plus
`--val_fraction` of that for val, of 5-27 frames (uniform) of 56x56 JPEG images (random 8x8-pixel
tiles, one tile changed per frame), `--episodes_per_shard` per file. Scale s writes s times the
episodes, so s times the shard files (the unit of labeling and of the skill stream). Generation
time is reported per scale. On the shared 2-core CPU (other jobs running) labeling cost ~7 s
per shard file whatever its size (the per-file pipeline) and generation ~30 episodes/s: 10x the
10,000-episode video would take hours, so the recorded run (docs/skills.md) used a 1,000-episode
base (its 10x is the main job's size) in files of 250 episodes:

  python -m experiments.benchmark_memory --out_dir=/tmp/benchmark_memory \
      --base_episodes=1000 --episodes_per_shard=250 --num_steps=50

Per scale, each case runs in its own process (this script with --child) and its peak RSS is that
process's `ru_maxrss` (`os.wait4` of the child: its own, not the maximum over all children):

  label      `labeling.label_datasets` over train + val with a micro LAM (fresh init, 56x56, k = 1,
             Dz = 16; the labeling's memory does not depend on the LAM's weights, and a micro LAM
             keeps 10x affordable on a shared CPU)
  skill      `skill.trainer.train_and_evaluate` on those labels, the `train_skill_model.py:babyai`
             config with the main job's window 32 / hop 16, z-scored latents (a streaming
             statistics pass), `--num_steps` steps and an evaluation on val
  skill_rec  the same with lambda_rec = 1 (frames streamed with the latents; the micro LAM as the
             frozen model)

With --small everything is tiny (40-episode base, 8 per shard, the tiny skill config, 2 steps),
the cases default to `label` alone (the skill model's compilation would take the smoke test past
its budget: `--small --cases=label,skill,skill_rec` measures the whole chain, ~2 minutes a scale
on a loaded 2-core CPU), and one child per scale runs the cases in turn (the peak of the chain). The table ends with, per case, the ratio of peak RSS at
the largest scale over the smallest (target: <= 1.15). The figures are also written as JSON
(`RESULT {...}` on stdout and <out_dir>/benchmark_memory.json).
"""
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

_OUT = flags.DEFINE_string("out_dir", "/tmp/benchmark_memory", "Corpora, labels, runs, results.")
_SMALL = flags.DEFINE_bool("small", False, "Tiny sizes (the smoke test).")
_BASE = flags.DEFINE_integer("base_episodes", 10_000, "Train episodes at scale 1.")
_VAL = flags.DEFINE_float("val_fraction", 0.1, "Val episodes as a fraction of train.")
_PER_SHARD = flags.DEFINE_integer("episodes_per_shard", 100, "Episodes per RLDS shard file.")
_SCALES = flags.DEFINE_list("scales", ["1", "3", "10"], "Corpus sizes, multiples of the base.")
_CASES = flags.DEFINE_list("cases", ["label", "skill", "skill_rec"], "Cases, in order.")
_STEPS = flags.DEFINE_integer("num_steps", 100, "Skill-model training steps per case.")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the corpora and runs (default: delete each "
                          "scale's files once measured).")
_CHILD = flags.DEFINE_string("child", None, "Internal: run these '+'-joined cases in this process.")
_SCALE_DIR = flags.DEFINE_string("scale_dir", None, "Internal: the scale's folder.")

IMAGE_SIZE, TILE, MIN_FRAMES, MAX_FRAMES, LATENT_DIM = 56, 8, 5, 27, 16
NAME = "babyai_synthetic_video"


def sizes() -> dict:
  if _SMALL.value:
    return {"base": 40, "per_shard": 8, "num_steps": 2}
  return {"base": _BASE.value, "per_shard": _PER_SHARD.value, "num_steps": _STEPS.value}


# ---------------------------------------------------------------- corpus


def synthetic_episode(rng, index: int) -> dict:
  """One episode in the form `babyai.to_rlds` encodes: random tiles, one changed per frame."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  num = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
  cells = IMAGE_SIZE // TILE
  grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
  images = []
  for _ in range(num):
    i, j = rng.integers(0, cells, size=2)
    grid[i, j] = rng.integers(0, 256, size=3, dtype=np.uint8)
    images.append(np.repeat(np.repeat(grid, TILE, 0), TILE, 1))
  none = np.zeros((0,), np.int32)
  return {"image": np.stack(images), "direction": rng.integers(0, 4, size=num),
          "mission": "open the door", "level": "synthetic", "seed": index,
          "subgoal_done_steps": none, "subgoal_names": [], "subgoal_instruction_index": none,
          "leaf_done_steps": none, "leaf_names": [], "instruction_done_steps": none,
          "instruction_names": []}


def write_corpus(data_dir: str, num_train: int, num_val: int, per_shard: int) -> dict:
  """The synthetic corpus (seeded per shard); returns its directory, episode and frame counts."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import rlds_writer  # pylint: disable=g-import-not-at-top
  from data_pipeline.generators import babyai  # pylint: disable=g-import-not-at-top
  writer = rlds_writer.ShardedRLDSWriter(
      data_dir, NAME, babyai.episode_features(action_free=True, image_size=IMAGE_SIZE),
      description="experiments/benchmark_memory.py synthetic corpus", config={"synthetic": 1})
  frames = 0
  for split_index, (split, total) in enumerate((("train", num_train), ("val", num_val))):
    num_shards = -(-total // per_shard)
    for index in range(num_shards):
      count = min(per_shard, total - index * per_shard)
      rng = np.random.default_rng((split_index, index))
      episodes = [synthetic_episode(rng, index * per_shard + e) for e in range(count)]
      frames += sum(len(e["image"]) for e in episodes)
      writer.write_shard(split, index, num_shards,
                         (babyai.to_rlds(e, action_free=True) for e in episodes))
  return {"dataset_dir": writer.finalize(), "episodes": num_train + num_val, "frames": frames}


# ---------------------------------------------------------------- the measured cases (children)


def micro_lam():
  """A fresh micro LAM at 56x56 (k = 1, Dz = 16), the same in every child (seed 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  from hilam_jax import lam  # pylint: disable=g-import-not-at-top
  config = lam.LAMConfig.tiny(stem_stride=2, idm_widths=(8, 16), fdm_widths=(8, 16),
                              idm_mlp_width=16, fdm_cond_width=16, norm_groups=4,
                              latent_dim=LATENT_DIM)
  return lam.FrozenLAM(lam.LatentActionModel(config),
                       lam.init_params(config, jax.random.key(0), (IMAGE_SIZE, IMAGE_SIZE)),
                       frame_gap=1, image_size=(IMAGE_SIZE, IMAGE_SIZE))


def skill_config(labels_dir: str, num_steps: int, lambda_rec: float):
  from experiments.configs import train_skill_model  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import model as skill_model  # pylint: disable=g-import-not-at-top
  if _SMALL.value:
    config = train_skill_model.get_config("tiny")
    config.model = train_skill_model._model(  # pylint: disable=protected-access
        skill_model.SkillModelConfig.tiny(latent_dim=LATENT_DIM))
  else:
    config = train_skill_model.get_config("babyai")
    config.data.window, config.data.window_hop = 32, 16  # the main job's
    config.num_eval_batches = 4
  config.data.labels_dir = labels_dir
  config.data.normalize = "zscore" if not lambda_rec else "none"
  config.lambda_rec = lambda_rec
  config.num_steps = num_steps
  config.eval_every = config.checkpoint_every = num_steps
  config.log_every = max(1, num_steps // 4)
  return config


def run_cases(cases: list[str], scale_dir: str) -> None:
  from hilam_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_library_logs()
  with open(os.path.join(scale_dir, "corpus.json")) as f:
    corpus = json.load(f)
  labels_dir = os.path.join(scale_dir, "labels")
  lam = micro_lam()
  for case in cases:
    start = time.perf_counter()
    if case == "label":
      from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top
      labeling.label_datasets(
          lam, [{"dataset_dir": corpus["dataset_dir"], "split": s} for s in ("train", "val")],
          labels_dir, batch_size=256)
    elif case in ("skill", "skill_rec"):
      from hilam_jax.skill import trainer  # pylint: disable=g-import-not-at-top
      rec = case == "skill_rec"
      trainer.train_and_evaluate(skill_config(labels_dir, sizes()["num_steps"], float(rec)),
                                 os.path.join(scale_dir, case), frozen_lam=lam if rec else None)
    else:
      raise ValueError(f"unknown case {case!r}")
    print(f"CASE {case} {time.perf_counter() - start:.1f}s", flush=True)


# ---------------------------------------------------------------- the parent


def measure(cases: list[str], scale_dir: str) -> dict:
  """Runs `cases` in one child process; its peak RSS (MB) and wall time."""
  command = [sys.executable, "-m", "experiments.benchmark_memory", f"--child={'+'.join(cases)}",
             f"--scale_dir={scale_dir}"] + (["--small"] if _SMALL.value else []) + [
                 f"--num_steps={_STEPS.value}"]
  start = time.perf_counter()
  with open(os.path.join(scale_dir, f"{'+'.join(cases)}.log"), "w") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode:
    raise RuntimeError(f"{'+'.join(cases)} failed (exit {process.returncode}); see {log.name}")
  return {"peak_rss_mb": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - start}


def format_table(rows: list[dict], ratios: dict) -> str:
  lines = ["| scale | episodes | frames | shards | case | peak RSS (MB) | seconds |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['scale']}x | {r['episodes']:,} | {r['frames']:,} | {r['shards']} | "
                 f"{r['case']} | {r['peak_rss_mb']:.1f} | {r['seconds']:.0f} |")
  for case, ratio in ratios.items():
    lines.append(f"ratio {case}: {ratio['largest']}x / {ratio['smallest']}x = "
                 f"{ratio['ratio']:.3f}")
  return "\n".join(lines)


def main(argv):
  del argv
  if _CHILD.value:
    run_cases(_CHILD.value.split("+"), _SCALE_DIR.value)
    return
  size = sizes()
  scales = sorted(int(s) for s in _SCALES.value)
  cases = _CASES.value
  if _SMALL.value and not flags.FLAGS["cases"].present:
    cases = ["label"]
  groups = [cases] if _SMALL.value else [[c] for c in cases]
  os.makedirs(_OUT.value, exist_ok=True)
  rows, generation = [], {}
  for scale in scales:
    scale_dir = os.path.join(_OUT.value, f"scale{scale}")
    shutil.rmtree(scale_dir, ignore_errors=True)
    os.makedirs(scale_dir)
    start = time.perf_counter()
    num_train = size["base"] * scale
    corpus = write_corpus(os.path.join(scale_dir, "data"), num_train,
                          max(1, round(num_train * _VAL.value)), size["per_shard"])
    generation[scale] = time.perf_counter() - start
    with open(os.path.join(scale_dir, "corpus.json"), "w") as f:
      json.dump(corpus, f)
    shards = len([p for p in os.listdir(corpus["dataset_dir"]) if ".tfrecord-" in p])
    print(f"scale {scale}x: {corpus['episodes']:,} episodes, {corpus['frames']:,} frames, "
          f"{shards} shards, generated in {generation[scale]:.0f}s", flush=True)
    for cases in groups:
      result = measure(cases, scale_dir)
      rows.append({"scale": scale, "episodes": corpus["episodes"], "frames": corpus["frames"],
                   "shards": shards, "case": "+".join(cases), **result})
      print(f"  {rows[-1]['case']}: peak RSS {result['peak_rss_mb']:.1f} MB in "
            f"{result['seconds']:.0f}s", flush=True)
    if not _KEEP.value:
      shutil.rmtree(scale_dir)
  ratios = {}
  for case in dict.fromkeys(r["case"] for r in rows):
    by_scale = {r["scale"]: r["peak_rss_mb"] for r in rows if r["case"] == case}
    ratios[case] = {"smallest": scales[0], "largest": scales[-1],
                    "ratio": by_scale[scales[-1]] / by_scale[scales[0]]}
  table = format_table(rows, ratios)
  print(table)
  result = {"rows": rows, "ratios": ratios, "generation_seconds": generation, "sizes": size,
            "table": table}
  with open(os.path.join(_OUT.value, "benchmark_memory.json"), "w") as f:
    json.dump(result, f, indent=1)
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)

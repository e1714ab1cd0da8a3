"""The main job: HiLAM's data-efficiency experiment on BabyAI, end to end, resumable.

  1 data       BabyAI bot episodes from the simulator: a large ACTION-FREE video set (seed 1)
               and a separate set of action-labelled demonstrations (seed 0), both with
               ground-truth subtask boundaries
  2 lam        stage-0 latent action model on the video
  3 labels     latent actions z^0 for the video and for the demos (separate folders)
  4 skill      H-Net skill model on the video's latent actions
  5 skills     per-frame skills z̄^1, z̄^2 for video and demos; boundary F1 vs ground truth
  6 pretrain   on the video's pseudo-labels: flat BAKU -> z^0 and -> z̄^2; pi^h -> z̄^2 (and z̄^1);
               pi^l(o, z̄^2) -> z^0 (and the ablations' pi^l(o, z̄^1) -> z^0, pi^l(o, z̄^2) -> z̄^1)
  7 finetune   for each demo fraction: BAKU (demos only), flat z^0 / z̄^2 fine-tuned, HiLAM
               (frozen pi^h, pi^l fine-tuned with an action head on pi^h's predicted skill),
               HiLAM without pretraining (pi^h, pi^l pretrained on the fraction's own demo video);
               ablations at the largest fraction
  8 evaluate   success rate (95% Wilson CI) in the BabyAI simulator on held-out seeds, videos
  9 report     report.md, success_vs_demos.png, training curves, results.json (versions, seeds)

Every stage writes into `workdir`; a stage whose output is complete is reused, and the jobs
inside stages resume (generator shards, labeling shards, checkpoints), so rerunning the same
command after an interruption continues where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections

from data_pipeline import run_info

METHODS = ("baku", "flat_z0", "flat_z2", "hilam", "hilam_no_pretrain")
ABLATIONS = ("hilam_s1_z0", "hilam_s2_s1")
# HiLAM variants: (high-level target, low-level target); "z0" = latent actions, "sN" = skills.
HILAM_LEVELS = {"hilam": ("s2", "z0"), "hilam_no_pretrain": ("s2", "z0"),
                "hilam_s1_z0": ("s1", "z0"), "hilam_s2_s1": ("s2", "s1")}
FLAT_TARGETS = {"flat_z0": "z0", "flat_z2": "s2"}


def _stage(workdir: str, name: str, fn: Callable[[], Any]) -> Any:
  """Runs `fn` once: its JSON result is stored in <workdir>/stages/<name>.json and reused."""
  path = os.path.join(workdir, "stages", f"{name}.json")
  if os.path.exists(path):
    with open(path) as f:
      logging.info("[%s] done before, reusing %s", name, path)
      return json.load(f)
  logging.info("[%s] starting", name)
  start = time.perf_counter()
  result = fn()
  result = {"result": result, "seconds": round(time.perf_counter() - start, 1)}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(run_info.to_jsonable(result), f, indent=1)
  os.replace(path + ".tmp", path)
  logging.info("[%s] finished in %.0f s", name, result["seconds"])
  return result


class Paths:
  """Where every stage writes, under one workdir."""

  def __init__(self, workdir: str):
    self.root = workdir
    self.data = os.path.join(workdir, "data")
    self.lam = os.path.join(workdir, "lam")
    self.labels_video = os.path.join(workdir, "labels", "video")
    self.labels_demos = os.path.join(workdir, "labels", "demos")
    self.skill = os.path.join(workdir, "skill_model")
    self.skills_video = os.path.join(workdir, "skills", "video")
    self.skills_demos = os.path.join(workdir, "skills", "demos")
    self.discovery = os.path.join(workdir, "skills", "discovery")
    self.policies = os.path.join(workdir, "policies")
    self.evaluation = os.path.join(workdir, "evaluation")
    self.report = os.path.join(workdir, "report")

  def pretrain(self, name: str) -> str:
    return os.path.join(self.policies, "pretrain", name)

  def finetune(self, method: str, fraction: float) -> str:
    return os.path.join(self.policies, f"demos_{round(100 * fraction)}pct", method)


# ----------------------------------------------------------------------------- stages 1-5


def _copy(config: Any) -> ml_collections.ConfigDict:
  """An unlocked deep copy: stage configs are derived, the launch config is never mutated."""
  return ml_collections.ConfigDict(config.to_dict())


def _generate(config: Any, paths: Paths) -> dict:
  from data_pipeline import summary  # pylint: disable=g-import-not-at-top
  from data_pipeline.generators import babyai  # pylint: disable=g-import-not-at-top
  out = {}
  for key in ("video", "demos"):
    generation = babyai.generate(config[key], paths.data)
    out[key] = generation["dataset_dir"]
    summary_dir = os.path.join(paths.root, "summary", key)
    stats = summary.write_summary(generation["dataset_dir"], summary_dir)
    out[f"{key}_summary"] = {s: stats[s] for s in ("train", "val") if s in stats}
    logging.info("%s dataset: %s (%.1f episodes/s)", key, generation["dataset_dir"],
                 generation["episodes_per_second"])
  return out


def _train_lam(config: Any, paths: Paths, data: dict) -> dict:
  from hilam_jax.lam import trainer  # pylint: disable=g-import-not-at-top
  lam_config = _copy(config.lam)
  lam_config.data.train = ({"dataset_dir": data["video"], "split": "train"},)
  lam_config.data.val = ({"dataset_dir": data["video"], "split": "val"},)
  return trainer.train_and_evaluate(lam_config, paths.lam)


def _label(config: Any, paths: Paths, data: dict) -> dict:
  from hilam_jax.lam import labeling, trainer  # pylint: disable=g-import-not-at-top
  lam = trainer.load_frozen_lam(paths.lam)
  fingerprint = trainer.checkpoint_fingerprint(paths.lam)
  out = {}
  for key, folder in (("video", paths.labels_video), ("demos", paths.labels_demos)):
    datasets = [{"dataset_dir": data[key], "split": s} for s in ("train", "val")]
    out[key] = labeling.label_datasets(lam, datasets, folder, batch_size=256,
                                       fingerprint=fingerprint)
  return out


def _train_skill_model(config: Any, paths: Paths) -> dict:
  from hilam_jax.skill import trainer  # pylint: disable=g-import-not-at-top
  skill_config = _copy(config.skill)
  skill_config.data.labels_dir = paths.labels_video
  return trainer.train_and_evaluate(skill_config, paths.skill)


def _extract_and_score_skills(config: Any, paths: Paths, data: dict) -> dict:
  from hilam_jax.skill import discovery, extract  # pylint: disable=g-import-not-at-top
  out = {}
  for key, labels, skills in (("video", paths.labels_video, paths.skills_video),
                              ("demos", paths.labels_demos, paths.skills_demos)):
    out[key] = extract.extract_skills(paths.skill, labels, skills)
  report = discovery.run_evaluation(paths.skills_video, data["video"], paths.discovery,
                                    split="val", num_filmstrips=config.report.num_filmstrips)
  logging.info("skill discovery on the video's val split:\n%s", report["table"])
  out["discovery"] = report["results"]
  out["filmstrips"] = report["filmstrips"]
  return out


# ----------------------------------------------------------------------------- policies


def label_dims(paths: Paths) -> dict[str, int]:
  """Sizes of z^0, z̄^1, z̄^2 (read from the label folders)."""
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import extract  # pylint: disable=g-import-not-at-top
  with open(os.path.join(paths.labels_video, labeling.MANIFEST)) as f:
    dims = {"z0": int(json.load(f)["latent_dim"])}
  with open(os.path.join(paths.skills_video, extract.MANIFEST)) as f:
    first = json.load(f)["shards"][0]
  shard = extract.read_skill_shard(os.path.join(paths.skills_video, first))
  for stage in ("s1", "s2"):
    dims[stage] = int(next(iter(shard[f"skill/{stage}"].values())).shape[-1])
  return dims


def _label_spec(key: str, labels_dir: str, skills_dir: str) -> dict:
  return {"dir": labels_dir} if key == "z0" else {"dir": skills_dir, "key": f"skill/{key}"}


def policy_config(config: Any, *, role: str, dataset: str, heads: dict, labels: dict | None = None,
                  fraction: float = 1.0, condition: dict | None = None,
                  init_from: str | None = None, num_steps: int,
                  condition_dim: int = 0) -> ml_collections.ConfigDict:
  """A `train_policy` config for one run of the experiment (shared sizes from config.policy)."""
  from hilam_jax.policy import config as policy_defaults  # pylint: disable=g-import-not-at-top
  p = config.policy
  c = policy_defaults.default_config("baku")
  c.seed = config.seed
  c.role = role
  c.data.train = ({"dataset_dir": dataset},)
  c.data.val = ({"dataset_dir": dataset},)
  c.data.episode_fraction = fraction
  c.data.labels = labels or {}
  c.data.shuffle_buffer = p.shuffle_buffer
  c.lang_encoder = p.lang_encoder
  c.chunk = p.chunk
  c.head_hidden = tuple(p.head_hidden)
  c.heads = heads
  c.model = policy_defaults.model(p.model_size, proprio_dim=4, condition_dim=condition_dim,
                               condition_mode=p.condition_mode)
  if condition:
    for k, v in condition.items():
      c.condition[k] = v
  c.init_from = init_from
  c.batch_size = p.batch_size
  c.num_steps = num_steps
  c.learning_rate = p.learning_rate
  c.warmup_steps = min(p.warmup_steps, max(num_steps // 10, 1))
  c.log_every = min(p.log_every, num_steps)
  c.eval_every = 0  # the final evaluation only (finish_run)
  c.checkpoint_every = num_steps
  c.num_eval_batches = p.num_eval_batches
  return c


def _run_policy(name: str, workdir: str, cfg: ml_collections.ConfigDict) -> dict:
  from hilam_jax.policy import trainer  # pylint: disable=g-import-not-at-top
  done = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  logging.info("policy run %s -> %s", name, workdir)
  metrics = trainer.train_and_evaluate(cfg, workdir)
  with open(done + ".tmp", "w") as f:
    json.dump(metrics, f, indent=1)
  os.replace(done + ".tmp", done)
  return metrics


class Planner:
  """Builds and runs the experiment's policy runs; every run is cached in its workdir."""

  def __init__(self, config: Any, paths: Paths, data: dict):
    self.config, self.paths, self.data = config, paths, data
    self.dims = label_dims(paths)
    self.metrics: dict[str, dict] = {}

  def _latent_head(self, target: str, name: str = "latent") -> dict:
    return {name: {"kind": "latent", "dim": self.dims[target], "target": target}}

  def _action_head(self) -> dict:
    return {"action": {"kind": "categorical", "dim": 7, "target": "action"}}

  def _finetune_config(self, **kwargs):
    cfg = policy_config(self.config, dataset=self.data["demos"], heads=self._action_head(),
                        num_steps=self.config.policy.finetune_steps, **kwargs)
    cfg.data.ignore_action = 6  # BabyAI's terminal placeholder 'done'
    return cfg

  def run(self, name: str, workdir: str, cfg) -> str:
    self.metrics[name] = _run_policy(name, workdir, cfg)
    return workdir

  def pretrain_flat(self, target: str) -> str:
    p = self.paths
    cfg = policy_config(self.config, role="flat", dataset=self.data["video"],
                        heads=self._latent_head(target),
                        labels={target: _label_spec(target, p.labels_video, p.skills_video)},
                        num_steps=self.config.policy.pretrain_steps)
    return self.run(f"pretrain/flat_{target}", p.pretrain(f"flat_{target}"), cfg)

  def pretrain_levels(self, high_target: str, low_target: str, *, dataset: str, labels_dir: str,
                      skills_dir: str, fraction: float = 1.0, prefix: str = "") -> tuple[str, str]:
    """pi^h(o, lang) -> high_target and pi^l(o, high_target) -> low_target on `dataset`."""
    steps = self.config.policy.pretrain_steps
    tag = f"{prefix}high_{high_target}"
    high = policy_config(
        self.config, role="high", dataset=dataset, fraction=fraction,
        heads=self._latent_head(high_target, "skill"),
        labels={high_target: _label_spec(high_target, labels_dir, skills_dir)}, num_steps=steps)
    high_dir = self.run(f"pretrain/{tag}", self.paths.pretrain(tag), high)
    tag = f"{prefix}low_{high_target}_{low_target}"
    labels = {k: _label_spec(k, labels_dir, skills_dir) for k in {high_target, low_target}}
    low = policy_config(
        self.config, role="low", dataset=dataset, fraction=fraction,
        heads=self._latent_head(low_target), labels=labels,
        condition={"key": high_target, "source": "labels"},
        condition_dim=self.dims[high_target], num_steps=steps)
    low_dir = self.run(f"pretrain/{tag}", self.paths.pretrain(tag), low)
    return high_dir, low_dir

  def finetune(self, method: str, fraction: float) -> dict:
    """Trains `method` on `fraction` of the demos; returns how to build its test-time policy."""
    p, workdir = self.paths, self.paths.finetune(method, fraction)
    name = f"{method}@{fraction:g}"
    if method == "baku":
      self.run(name, workdir, self._finetune_config(role="flat", fraction=fraction))
      return {"kind": "flat", "workdir": workdir}
    if method in FLAT_TARGETS:
      init = self.pretrain_flat(FLAT_TARGETS[method])
      self.run(name, workdir, self._finetune_config(role="flat", fraction=fraction,
                                                    init_from=init))
      return {"kind": "flat", "workdir": workdir}
    high_target, low_target = HILAM_LEVELS[method]
    if method == "hilam_no_pretrain":
      # Pretraining only on the pseudo-labels of the fraction's own demonstration video.
      high_dir, low_dir = self.pretrain_levels(
          high_target, low_target, dataset=self.data["demos"], labels_dir=p.labels_demos,
          skills_dir=p.skills_demos, fraction=fraction,
          prefix=f"demos_{round(100 * fraction)}pct_")
    else:
      high_dir, low_dir = self.pretrain_levels(
          high_target, low_target, dataset=self.data["video"], labels_dir=p.labels_video,
          skills_dir=p.skills_video)
    cfg = self._finetune_config(
        role="low", fraction=fraction, init_from=low_dir,
        condition={"key": high_target, "source": "high_policy", "high_workdir": high_dir,
                   "high_head": "skill"},
        condition_dim=self.dims[high_target])
    self.run(name, workdir, cfg)
    return {"kind": "hierarchical", "high": high_dir, "low": workdir}


def build_policy(spec: dict, config: Any):
  """The test-time policy of a trained method (`Planner.finetune`'s return value)."""
  from hilam_jax.policy import policies  # pylint: disable=g-import-not-at-top
  if spec["kind"] == "flat":
    return policies.FlatPolicy(policies.PolicyNetwork.load(spec["workdir"], heads=("action",)))
  high = policies.PolicyNetwork.load(spec["high"], heads=("skill",))
  low = policies.PolicyNetwork.load(spec["low"], heads=("action",), encoder=high.encoder)
  return policies.HierarchicalPolicy(high, low, high_every=config.policy.high_every)


def _evaluate(config: Any, paths: Paths, name: str, spec: dict, demos_dir: str) -> dict:
  from data_pipeline.sim import babyai as sim  # pylint: disable=g-import-not-at-top
  from hilam_jax.evaluation import babyai as babyai_eval  # pylint: disable=g-import-not-at-top
  out = os.path.join(paths.evaluation, name.replace("@", "_"))
  done = os.path.join(out, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  policy = build_policy(spec, config)
  # Render exactly as the demonstrations were generated (view, tile size).
  render = sim.render_settings(demos_dir)
  babyai_eval.check_render_settings(demos_dir, config.level, render["view"], render["tile_size"])
  start = time.perf_counter()
  result = babyai_eval.evaluate_babyai(
      policy, config.level, num_episodes=config.eval.num_episodes, num_envs=config.eval.num_envs,
      seed=config.eval.seed, max_steps=config.eval.max_steps, view=render["view"],
      tile_size=render["tile_size"],
      video_dir=os.path.join(out, "videos"),
      num_videos=config.eval.num_videos).to_dict()
  result["seconds"] = round(time.perf_counter() - start, 1)
  result.pop("episodes", None)
  os.makedirs(out, exist_ok=True)
  with open(done, "w") as f:
    json.dump(result, f, indent=1)
  logging.info("%s: success %.3f [%.3f, %.3f] over %d episodes", name, result["success_rate"],
               result["ci_low"], result["ci_high"], result["num_episodes"])
  return result


def _policies_and_evaluation(config: Any, paths: Paths, data: dict) -> dict:
  planner = Planner(config, paths, data)
  results: dict[str, dict] = {}
  for fraction in config.fractions:
    for method in config.methods:
      spec = planner.finetune(method, fraction)
      results.setdefault(method, {})[f"{fraction:g}"] = _evaluate(
          config, paths, f"{method}@{fraction:g}", spec, data["demos"])
  ablation_fraction = max(config.fractions)
  for method in config.ablations:
    spec = planner.finetune(method, ablation_fraction)
    results.setdefault(method, {})[f"{ablation_fraction:g}"] = _evaluate(
        config, paths, f"{method}@{ablation_fraction:g}", spec, data["demos"])
  return {"success": results, "train_metrics": planner.metrics, "label_dims": planner.dims}


# ----------------------------------------------------------------------------- main


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole experiment in `workdir`; returns the results dict."""
  from hilam_jax import report  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  run_info.write_run_info(workdir, config)
  paths = Paths(workdir)
  # The experiment trains ~30 policies of a few shapes: identical programs compile once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  data = _stage(workdir, "1_data", lambda: _generate(config, paths))["result"]
  if config.stop_after == "data":
    return {"data": data}
  lam = _stage(workdir, "2_lam", lambda: _train_lam(config, paths, data))
  labels = _stage(workdir, "3_labels", lambda: _label(config, paths, data))
  skill = _stage(workdir, "4_skill_model", lambda: _train_skill_model(config, paths))
  skills = _stage(workdir, "5_skills", lambda: _extract_and_score_skills(config, paths, data))
  policies = _stage(workdir, "6_policies", lambda: _policies_and_evaluation(config, paths, data))
  results = {
      "level": config.level, "seed": config.seed, "data": data, "lam": lam, "labels": labels,
      "skill_model": skill, "skills": skills, "policies": policies["result"],
      "stage_seconds": {"lam": lam["seconds"], "labels": labels["seconds"],
                        "skill_model": skill["seconds"], "skills": skills["seconds"],
                        "policies": policies["seconds"]},
      "config": run_info.to_jsonable(config), "versions": run_info.package_versions(),
  }
  report.write_report(results, paths, config)
  return results

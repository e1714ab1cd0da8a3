"""The main job: HiLAM's data-efficiency experiment in one world, end to end, resumable.

The world (`config.world`: a benchmark's adapter in hilam_jax/worlds) supplies the data, the
policies' action head, cameras and proprio, and the evaluation harness; this module calls only
that interface (`worlds.World`).

  1 data       the world's episodes (`World.generate`): a large ACTION-FREE video set and a
               separate set of action-labelled demonstrations, disjoint env seeds, both
               recorded with the same camera settings (and ground-truth subtask boundaries)
  2 lam        stage-0 latent action model on the video
  3 labels     latent actions z^0 for the video and for the demos (separate folders)
  4 skill      H-Net skill model on the video's latent actions
  5 skills     per-frame skills z̄^1, z̄^2 for video and demos; boundary F1 vs ground truth
  6 policies   a job graph (`Planner`, run by `hilam_jax.jobs` in `num_workers` processes): for
               every training seed, pretraining on the video's pseudo-labels (flat BAKU -> z^0;
               pi^h -> z̄^2 (and z̄^1), which is also flat BAKU -> z̄^2's pretraining: one run;
               pi^l(o, z̄^2) -> z^0 (and the ablations')),
               then for every demo fraction: BAKU (demos only), flat z^0 / z̄^2 fine-tuned,
               HiLAM (frozen pi^h, pi^l fine-tuned with an action head on pi^h's predicted
               skill), HiLAM without pretraining (pi^h, pi^l pretrained on the fraction's own
               demo video); each evaluated in the world's simulator on held-out seeds
               (`World.evaluate`), with pi^l's use of its skill measured for the hierarchical
               methods (categorical actions)
  7 report     report.md (mean and 95% t-interval across seeds, per-seed values, the paper's
               orderings as paired differences), plots, training curves, results.json

Every stage writes into `workdir`; a stage whose output is complete is reused, and the jobs
inside stages resume (generator shards, labeling shards, checkpoints, finished policy runs and
evaluations), so rerunning the same command after an interruption continues where it stopped.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections

from data_pipeline import run_info
from hilam_jax import jobs
from hilam_jax import worlds
from hilam_jax.training import workdir_lock

METHODS = ("baku", "flat_z0", "flat_z2", "hilam", "hilam_no_pretrain")
ABLATIONS = ("hilam_s1_z0", "hilam_s2_s1")
# HiLAM variants: (high-level target, low-level target); "z0" = latent actions, "sN" = skills.
HILAM_LEVELS = {"hilam": ("s2", "z0"), "hilam_no_pretrain": ("s2", "z0"),
                "hilam_s1_z0": ("s1", "z0"), "hilam_s2_s1": ("s2", "s1")}
FLAT_TARGETS = {"flat_z0": "z0", "flat_z2": "s2"}
# config.eval keys passed to the evaluation only when set: the world's own settings, and
# `offline` (no simulator run: held-out action errors, `offline_result`).
OPTIONAL_EVAL_KEYS = ("task_ids", "render_size", "num_sim_workers", "offline")


def _stage(workdir: str, name: str, fn: Callable[[], Any]) -> Any:
  """Runs `fn` once: its JSON result is stored in <workdir>/stages/<name>.json and reused (a
  file that does not parse counts as not done: the stage is redone, with a warning)."""
  path = os.path.join(workdir, "stages", f"{name}.json")
  done = run_info.read_done_json(path)
  if done is not None:
    logging.info("[%s] done before, reusing %s", name, path)
    return done
  logging.info("[%s] starting", name)
  start = time.perf_counter()
  result = fn()
  result = {"result": result, "seconds": round(time.perf_counter() - start, 1)}
  run_info.write_json_atomic(path, result)
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

  def pretrain(self, name: str, seed: int) -> str:
    return os.path.join(self.policies, "pretrain", f"s{seed}", name)

  def finetune(self, method: str, fraction: float, seed: int) -> str:
    return os.path.join(self.policies, f"demos_{round(100 * fraction)}pct", f"s{seed}", method)

  def evaluation_dir(self, method: str, fraction: float, seed: int) -> str:
    return os.path.join(self.evaluation, f"{method}_{fraction:g}", f"s{seed}")


# ----------------------------------------------------------------------------- stages 1-5


def _copy(config: Any) -> ml_collections.ConfigDict:
  """An unlocked deep copy: stage configs are derived, the launch config is never mutated."""
  return ml_collections.ConfigDict(config.to_dict())


def check_data_specs(config: Any) -> None:
  """Refuses malformed data specs before any work: named sources (`data_pipeline.sources`) are
  checked; a generator spec needs a world with a generator; the demos are one dataset (the
  demo fractions are subsets of its episodes, the evaluation checks it)."""
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  world = worlds.get_world(config.world)
  for key in ("video", "demos"):
    if sources.has_sources(config[key]):
      named = sources.check_sources(config[key], key)
      if key == "demos" and len(named) != 1:
        raise ValueError(f"demos.sources names {len(named)} sources ({', '.join(named)}); the "
                         "demonstrations are one dataset")
    elif not world.has_generator:
      raise ValueError(f"world {world.name!r} has no data generator: set {key}.sources to its "
                       "datasets (docs/your_data.md)")


def _generate(config: Any, paths: Paths) -> dict:
  """The datasets of `config.video` and `config.demos`: generated by the world, or the named
  sources (RLDS datasets, video folders: `data_pipeline.sources`). data[key] is the first
  dataset's folder, data[key + "_datasets"] every dataset with its mixture weight."""
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  from data_pipeline import summary  # pylint: disable=g-import-not-at-top
  world = worlds.get_world(config.world)
  out = {}
  for key in ("video", "demos"):
    if sources.has_sources(config[key]):
      datasets = sources.resolve_sources(config[key], paths.data, what=key)
    else:
      generation = world.generate(config[key], paths.data)
      logging.info("%s dataset: %s (%.1f episodes/s)", key, generation["dataset_dir"],
                   generation["episodes_per_second"])
      datasets = [{"dataset_dir": generation["dataset_dir"], "weight": 1.0,
                   "source": "generated", "kind": "generated"}]
    out[key] = datasets[0]["dataset_dir"]
    out[f"{key}_datasets"] = datasets
    stats = []
    for d in datasets:
      summary_dir = os.path.join(paths.root, "summary", key,
                                 *((d["source"],) if len(datasets) > 1 else ()))
      stats.append(summary.write_summary(d["dataset_dir"], summary_dir))
      logging.info("%s source %s: %s", key, d["source"], d["dataset_dir"])
    out[f"{key}_summary"] = (
        {s: stats[0][s] for s in ("train", "val") if s in stats[0]} if len(stats) == 1 else
        {s: {"episodes": sum(st[s]["episodes"] for st in stats)} for s in ("train", "val")})
  return out


def datasets_of(data: dict, key: str) -> list[dict]:
  """The datasets of data[key] ("video", "demos") as DatasetSpec dicts: {"dataset_dir"}, plus
  the mixture weight when there are several. (A data stage of before the sources has only
  data[key].)"""
  found = data.get(f"{key}_datasets") or [{"dataset_dir": data[key]}]
  if len(found) == 1:
    return [{"dataset_dir": found[0]["dataset_dir"]}]
  return [{"dataset_dir": d["dataset_dir"], "weight": float(d["weight"])} for d in found]


def _train_lam(config: Any, paths: Paths, data: dict) -> dict:
  """Trains this run's LAM on the video; skipped when `config.frozen_model` labels the data."""
  from hilam_jax.lam import trainer  # pylint: disable=g-import-not-at-top
  if config.get("frozen_model"):
    logging.info("lam: not trained, the frozen model %s labels the data", config.frozen_model)
    return {"skipped": f"frozen_model {config.frozen_model} labels the data"}
  lam_config = _copy(config.lam)
  video = datasets_of(data, "video")
  lam_config.data.train = tuple(dict(d, split="train") for d in video)
  lam_config.data.val = tuple(dict(d, split="val") for d in video)
  return trainer.train_and_evaluate(lam_config, paths.lam)


def _label(config: Any, paths: Paths, data: dict) -> dict:
  from hilam_jax.lam import frozen_models, labeling  # pylint: disable=g-import-not-at-top
  spec = frozen_model_spec(config, paths)
  lam = frozen_models.load_frozen_model(spec)
  fingerprint = frozen_models.frozen_model_fingerprint(spec)
  out = {}
  for key, folder in (("video", paths.labels_video), ("demos", paths.labels_demos)):
    datasets = [{"dataset_dir": d["dataset_dir"], "split": s}
                for d in datasets_of(data, key) for s in ("train", "val")]
    # Pairs per call: what fits a host's memory (our LAM 256; UniSkill's depth model at 518 px
    # far fewer).
    out[key] = labeling.label_datasets(lam, datasets, folder, batch_size=lam.batch_size_hint,
                                       fingerprint=fingerprint)
  return out


def frozen_model_spec(config: Any, paths: Paths) -> str:
  """`config.frozen_model` if set, else this run's own LAM ('lam:<paths.lam>')."""
  return config.get("frozen_model") or f"lam:{paths.lam}"


def _train_skill_model(config: Any, paths: Paths) -> dict:
  from hilam_jax.skill import trainer  # pylint: disable=g-import-not-at-top
  skill_config = _copy(config.skill)
  # L_rec's frozen model; without it the skill trainer reads the LAM of the label manifest.
  if config.get("frozen_model") and skill_config.lambda_rec:
    skill_config.frozen_model = config.frozen_model
  skill_config.data.labels_dir = paths.labels_video
  # The skill model reads the latents the frozen model wrote (UniSkill's are 64-d).
  skill_config.model.latent_dim = label_dims(paths, skills=False)["z0"]
  return trainer.train_and_evaluate(skill_config, paths.skill)


def _extract_and_score_skills(config: Any, paths: Paths, data: dict) -> dict:
  from hilam_jax.skill import discovery, extract  # pylint: disable=g-import-not-at-top
  out = {}
  for key, labels, skills in (("video", paths.labels_video, paths.skills_video),
                              ("demos", paths.labels_demos, paths.skills_demos)):
    out[key] = extract.extract_skills(paths.skill, labels, skills)
  if not has_subtask_boundaries(data["video"]):
    out["discovery_skipped"] = (f"{data['video']} has no ground-truth subtask boundaries "
                                "(subtask/boundary): no boundary F1")
    logging.info("skill discovery not scored: %s", out["discovery_skipped"])
    return out
  report = discovery.run_evaluation(paths.skills_video, data["video"], paths.discovery,
                                    split="val", num_filmstrips=config.report.num_filmstrips)
  logging.info("skill discovery on the video's val split:\n%s", report["table"])
  out["discovery"] = report["results"]
  out["filmstrips"] = report["filmstrips"]
  # What any segmenter told the true subtask counts gets from z^0 (and, on the demos, from the
  # true actions): how much of the boundaries the latents keep
  # (docs/log/2026-12-03-skill-discovery-segment-ceilings.md).
  out["ceiling"] = {key: discovery.run_ceilings(labels, data[key],
                                                os.path.join(paths.discovery, f"ceiling_{key}"),
                                                split="val")["results"]
                    for key, labels in (("video", paths.labels_video),
                                        ("demos", paths.labels_demos))}
  return out


def has_subtask_boundaries(dataset_dir: str) -> bool:
  """Whether a dataset's standardized episodes carry ground-truth subtask boundaries."""
  from data_pipeline import dataset as dp  # pylint: disable=g-import-not-at-top
  from data_pipeline import schema  # pylint: disable=g-import-not-at-top
  ds, _, _ = dp.trajectory_dataset(dp.DatasetSpec(dataset_dir, split="val"),
                                   dp.TransformConfig())
  return "subtask/boundary" in schema.flatten_keys(ds.element_spec)


# ----------------------------------------------------------------------------- policies


def label_dims(paths: Paths, skills: bool = True) -> dict[str, int]:
  """Sizes of z^0, z̄^1, z̄^2 (read from the label folders; z^0 only without `skills`)."""
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import extract  # pylint: disable=g-import-not-at-top
  with open(os.path.join(paths.labels_video, labeling.MANIFEST)) as f:
    dims = {"z0": int(json.load(f)["latent_dim"])}
  if not skills:
    return dims
  with open(os.path.join(paths.skills_video, extract.MANIFEST)) as f:
    first = json.load(f)["shards"][0]
  shard = extract.read_skill_shard(os.path.join(paths.skills_video, first))
  for stage in ("s1", "s2"):
    dims[stage] = int(next(iter(shard[f"skill/{stage}"].values())).shape[-1])
  return dims


LATENT_TARGETS = ("z0", "s1", "s2")


def zscored_targets(spec: str | None) -> frozenset[str]:
  """The latent targets whose pretraining heads z-score them (`policy.latent_targets`): None or
  "" none, "zscore" every one, "zscore:z0" (comma-separated) only those named."""
  if not spec:
    return frozenset()
  mode, colon, names = spec.partition(":")
  chosen = [n.strip() for n in names.split(",") if n.strip()] if colon else list(LATENT_TARGETS)
  unknown = sorted(set(chosen) - set(LATENT_TARGETS))
  if mode != "zscore" or unknown or not chosen:
    raise ValueError(f"policy.latent_targets={spec!r}: expected '', 'zscore' or 'zscore:' with "
                     f"targets from {', '.join(LATENT_TARGETS)} (e.g. 'zscore:z0')")
  return frozenset(chosen)


def _label_spec(key: str, labels_dir: str, skills_dir: str) -> dict:
  return {"dir": labels_dir} if key == "z0" else {"dir": skills_dir, "key": f"skill/{key}"}


def policy_config(config: Any, *, role: str, dataset: str | list[dict], heads: dict, seed: int,
                  labels: dict | None = None, fraction: float = 1.0,
                  condition: dict | None = None, init_from: str | None = None, num_steps: int,
                  condition_dim: int = 0, pretraining: bool = False
                  ) -> ml_collections.ConfigDict:
  """A `train_policy` config for one run of the experiment (the shared regime: config.policy;
  cameras, proprio and the ignored action: the world's) on `dataset` (a folder, or DatasetSpec
  dicts of a mixture, `datasets_of`). A pretraining run (latent targets)
  warms up over `policy.pretrain_warmup_fraction` of its steps when that is set,
  `policy.warmup_fraction` otherwise."""
  from hilam_jax.policy import config as policy_defaults  # pylint: disable=g-import-not-at-top
  p = config.policy
  world = worlds.get_world(config.world)
  c = policy_defaults.default_config("baku")
  c.seed = seed
  c.role = role
  datasets = [{"dataset_dir": dataset}] if isinstance(dataset, str) else list(dataset)
  c.data.train = tuple(datasets)
  c.data.val = tuple(datasets)
  if len(datasets) > 1:  # e.g. robot episodes and human video: one structure (docs/your_data.md)
    c.data.fill_missing = True
  c.data.episode_fraction = fraction
  c.data.cameras = world.cameras
  c.data.ignore_action = world.action.ignore  # never a target (pretraining has no action head)
  c.data.labels = labels or {}
  c.data.shuffle_buffer = p.shuffle_buffer
  c.data.augment = p.augment
  c.data.image_size = tuple(p.image_size)
  c.lang_encoder = p.lang_encoder
  c.chunk = p.chunk
  c.head_hidden = tuple(p.head_hidden)
  c.heads = heads
  c.model = policy_defaults.model(p.model_size, proprio_dim=world.proprio_dim,
                                  condition_dim=condition_dim,
                                  condition_mode=p.condition_mode, **dict(p.model_overrides))
  if condition:
    for k, v in condition.items():
      c.condition[k] = v
  c.init_from = init_from
  c.batch_size = p.batch_size
  c.num_steps = num_steps
  c.learning_rate = p.learning_rate
  warmup = p.warmup_fraction
  if pretraining and p.get("pretrain_warmup_fraction", None) is not None:
    warmup = p.pretrain_warmup_fraction
  c.warmup_steps = max(1, round(warmup * num_steps))
  c.log_every = min(p.log_every, num_steps)
  # Validation curves (the report's convergence check) at `num_evals` points.
  c.eval_every = max(1, num_steps // p.num_evals)
  c.checkpoint_every = num_steps
  c.num_eval_batches = p.num_eval_batches
  return c


def _worker_setup(cache_dir: str | None) -> None:
  """Per-process set-up of a job (idempotent): logging, and the shared jit compilation cache (the
  experiment trains many policies of a few shapes: identical programs compile once). A cache
  directory set in the environment (`JAX_COMPILATION_CACHE_DIR`, JAX's own variable) is kept."""
  from hilam_jax import logs  # pylint: disable=g-import-not-at-top
  logging.use_absl_handler()  # timestamped lines in spawned workers too (absl's format)
  logging.set_verbosity(logging.INFO)
  logs.quiet_library_logs()
  if cache_dir and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def train_policy_job(workdir: str, config: dict, cache_dir: str | None = None) -> dict:
  """Trains one policy (cached: final_metrics.json marks a finished run). A `jobs.Job` function."""
  done = os.path.join(workdir, "final_metrics.json")
  finished = run_info.read_done_json(done)  # None also if it does not parse: trained again
  if finished is not None:
    return finished
  _worker_setup(cache_dir)
  from hilam_jax.policy import trainer  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  metrics = trainer.train_and_evaluate(ml_collections.ConfigDict(config), workdir)
  metrics = dict(metrics, train_seconds=round(time.perf_counter() - start, 1))
  run_info.write_json_atomic(done, metrics)
  return metrics


def build_policy(spec: dict, *, high_every: int = 1, sample_seed: int | None = None):
  """The test-time policy of a trained method (`Planner.finetune`'s spec)."""
  from hilam_jax.policy import policies  # pylint: disable=g-import-not-at-top
  if spec["kind"] == "flat":
    return policies.FlatPolicy(policies.PolicyNetwork.load(spec["workdir"], heads=("action",)),
                               sample_seed=sample_seed)
  high = policies.PolicyNetwork.load(spec["high"], heads=("skill",))
  low = policies.PolicyNetwork.load(spec["low"], heads=("action",), encoder=high.encoder)
  return policies.HierarchicalPolicy(high, low, high_every=high_every, sample_seed=sample_seed)


def evaluate_job(out_dir: str, spec: dict, eval_config: dict, world: str, level: str,
                 demos_dir: str, high_every: int, cache_dir: str | None = None) -> dict:
  """Success rate of one trained method in the world's simulator (cached: result.json). A
  `jobs.Job`.

  Actions are sampled from the policy with the evaluation seed (categorical actions), or taken
  as predicted if eval_config["actions"] == "argmax"; the world renders as its demos were
  recorded (`World.check_settings`) and runs its harness (`World.evaluate`).
  """
  done = os.path.join(out_dir, "result.json")
  finished = run_info.read_done_json(done)  # None also if it does not parse: evaluated again
  if finished is not None:
    return finished
  _worker_setup(cache_dir)
  adapter = worlds.get_world(world)
  e = eval_config
  reason = "eval.offline is set" if e.get("offline") else adapter.simulator_missing()
  if reason:
    result = offline_result(spec, adapter, reason)
    run_info.write_json_atomic(done, result)
    logging.info("%s: no success rate (%s); held-out %s %.4f", out_dir, reason,
                 result["metric"], result["action_error"])
    return result
  sample_seed = e["seed"] if e["actions"] == "sample" else None
  policy = build_policy(spec, high_every=high_every, sample_seed=sample_seed)
  settings = adapter.check_settings(demos_dir, level)
  start = time.perf_counter()
  result = adapter.evaluate(policy, level=level, settings=settings, eval_config=e,
                            video_dir=os.path.join(out_dir, "videos"))
  result["seconds"] = round(time.perf_counter() - start, 1)
  result["actions"] = e["actions"]
  result.pop("episodes", None)
  if spec["kind"] == "hierarchical" and adapter.action.kind == "categorical":
    result["skill_use"] = skill_use(spec, demos_dir, adapter,
                                    num_batches=e["skill_use_batches"])
  run_info.write_json_atomic(done, result)
  logging.info("%s: success %.3f [%.3f, %.3f] over %d episodes", out_dir, result["success_rate"],
               result["ci_low"], result["ci_high"], result["num_episodes"])
  return result


def offline_result(spec: dict, world: worlds.World, reason: str) -> dict:
  """What stands in for a success rate when the world's simulator cannot run: the fine-tuned
  policy's action error on the demos' val split, from its run's final validation (a
  hierarchical policy's pi^l acting on pi^h's predicted skill, as at test time): the action MSE
  (continuous actions), 1 - accuracy (categorical)."""
  workdir = spec["workdir"] if spec["kind"] == "flat" else spec["low"]
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    metrics = json.load(f)
  key = "action/mse" if world.action.kind == "continuous" else "action/accuracy"
  if key not in metrics:
    raise ValueError(f"{workdir}: its final metrics have no {key!r} (validation off?)")
  error = metrics[key] if key == "action/mse" else 1.0 - metrics[key]
  metric = "action MSE" if key == "action/mse" else "action error rate"
  return {"offline": reason, "action_error": float(error), "metric": metric}


def skill_use(spec: dict, demos_dir: str, world: worlds.World, *, num_batches: int,
              batch_size: int = 64) -> dict:
  """How much HiLAM's fine-tuned pi^l depends on its skill, on the demos' val split (worlds
  with categorical actions; the world's ignored action is never a target).

  For val frames o_t with pi^h's skill z = pi^h(o_t) (the skill pi^l acts on at test time) and
  the skill of another frame of the batch z' (a shuffled row), reports pi^l's action accuracy
  with z and with z', and the mean total-variation distance between its action distributions
  under z and z' (0: pi^l ignores the skill).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import dataset as dp  # pylint: disable=g-import-not-at-top
  from hilam_jax.policy import policies  # pylint: disable=g-import-not-at-top
  high = policies.PolicyNetwork.load(spec["high"], heads=("skill",))
  low = policies.PolicyNetwork.load(spec["low"], heads=("action",), encoder=high.encoder)
  pipe = dp.make_dataset(
      [{"dataset_dir": demos_dir, "split": "val"}], batch_size=batch_size,
      transforms=dp.TransformConfig(resize=high.image_size), seed=0, repeat=True,
      shuffle_buffer=1000)
  rng = np.random.default_rng(0)
  correct, correct_shuffled, tv, count = 0.0, 0.0, 0.0, 0
  for batch in itertools.islice(pipe.as_numpy_iterator(), num_batches):
    obs = {k: batch["observation"][k] for k in world.observation_keys()}
    instructions = list(batch[world.instruction_key])
    action = np.asarray(batch["action"]).reshape(len(instructions), -1)[:, 0]
    valid = (action != world.action.ignore if world.action.ignore is not None
             else np.ones(action.shape, bool))
    skill = high.skill(obs, instructions, "skill")
    shuffled = skill[rng.permutation(len(skill))]
    probs = [_softmax(low.predict(obs, instructions, condition=z)["action"][:, 0])
             for z in (skill, shuffled)]
    correct += float(np.sum((probs[0].argmax(-1) == action) & valid))
    correct_shuffled += float(np.sum((probs[1].argmax(-1) == action) & valid))
    tv += float(np.sum(0.5 * np.abs(probs[0] - probs[1]).sum(-1) * valid))
    count += int(valid.sum())
  count = max(count, 1)
  return {"accuracy": correct / count, "accuracy_shuffled_skill": correct_shuffled / count,
          "tv_distance_shuffled_skill": tv / count, "frames": count}


def _softmax(logits):
  import numpy as np  # pylint: disable=g-import-not-at-top
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


class Planner:
  """The experiment's policy runs and evaluations as a job graph (`hilam_jax.jobs`).

  Every (method, demo fraction, training seed) is one fine-tuning run and one evaluation; the
  pretraining runs it starts from are shared by the methods of a seed (each seed pretrains its
  own: its interval covers pretraining as well). A seed also picks which demos form a fraction
  (nested subsets in a seeded order, `trainer.select_episodes`).
  """

  def __init__(self, config: Any, paths: Paths, data: dict, dims: dict[str, int]):
    self.config, self.paths, self.data, self.dims = config, paths, data, dims
    self.jobs: dict[str, jobs.Job] = {}
    self.cache_dir = os.path.join(paths.root, "jax_cache")
    self.zscored = zscored_targets(config.policy.get("latent_targets", None))
    self.world = worlds.get_world(config.world)
    self.video = datasets_of(data, "video")

  def _latent_head(self, target: str, name: str = "latent") -> dict:
    head = {"kind": "latent", "dim": self.dims[target], "target": target}
    if target in self.zscored:
      head["normalize"] = "zscore"  # absent otherwise: the run configs of before the knob
    return {name: head}

  def _action_head(self) -> dict:
    return self.world.action.heads()

  def _train(self, name: str, workdir: str, cfg, deps: tuple[str, ...] = ()) -> str:
    if name not in self.jobs:
      self.jobs[name] = jobs.Job(name, train_policy_job,
                                 {"workdir": workdir, "config": cfg.to_dict(),
                                  "cache_dir": self.cache_dir}, deps=deps)
    return name

  def _finetune_config(self, **kwargs):
    cfg = policy_config(self.config, dataset=self.data["demos"], heads=self._action_head(),
                        num_steps=finetune_steps(self.config.policy, kwargs["fraction"]),
                        **kwargs)
    if cfg.init_from:  # a pretrained body: fine-tuned at this multiple of the heads' rate
      cfg.body_lr_multiplier = float(self.config.policy.get("finetune_body_lr_multiplier", 1.0))
    rule = self.config.policy.get("early_stopping")
    if rule is not None and kwargs["fraction"] in tuple(rule.fractions):
      cfg.early_stopping = {k: rule[k] for k in ("metric", "mode", "patience")}
    return cfg

  def pretrain_flat(self, target: str, seed: int) -> str:
    """Flat BAKU pretraining (o, lang) -> target on the video. For a skill target that is
    exactly pi^h's pretraining (same network, data, targets, seed; the head's name differs and
    fine-tuning replaces the head): one run serves both."""
    if target != "z0":
      return self.pretrain_high(target, seed=seed, dataset=self.video,
                                labels_dir=self.paths.labels_video,
                                skills_dir=self.paths.skills_video,
                                num_steps=self.config.policy.pretrain_steps)
    p = self.paths
    cfg = policy_config(self.config, role="flat", dataset=self.video, seed=seed,
                        heads=self._latent_head(target),
                        labels={target: _label_spec(target, p.labels_video, p.skills_video)},
                        num_steps=self.config.policy.pretrain_steps, pretraining=True)
    return self._train(f"pretrain/s{seed}/flat_{target}", p.pretrain(f"flat_{target}", seed), cfg)

  def pretrain_high(self, high_target: str, *, seed: int, dataset: str | list[dict],
                    labels_dir: str, skills_dir: str, num_steps: int, fraction: float = 1.0,
                    prefix: str = "") -> str:
    """pi^h(o, lang) -> high_target."""
    tag = f"{prefix}high_{high_target}"
    high = policy_config(
        self.config, role="high", dataset=dataset, fraction=fraction, seed=seed,
        heads=self._latent_head(high_target, "skill"),
        labels={high_target: _label_spec(high_target, labels_dir, skills_dir)},
        num_steps=num_steps, pretraining=True)
    return self._train(f"pretrain/s{seed}/{tag}", self.paths.pretrain(tag, seed), high)

  def pretrain_levels(self, high_target: str, low_target: str, *, seed: int,
                      dataset: str | list[dict],
                      labels_dir: str, skills_dir: str, num_steps: int, fraction: float = 1.0,
                      prefix: str = "") -> tuple[str, str]:
    """pi^h(o, lang) -> high_target and pi^l(o, high_target) -> low_target (teacher-forced: the
    two runs are independent)."""
    high_job = self.pretrain_high(high_target, seed=seed, dataset=dataset, labels_dir=labels_dir,
                                  skills_dir=skills_dir, num_steps=num_steps, fraction=fraction,
                                  prefix=prefix)
    tag = f"{prefix}low_{high_target}_{low_target}"
    labels = {k: _label_spec(k, labels_dir, skills_dir) for k in {high_target, low_target}}
    low = policy_config(
        self.config, role="low", dataset=dataset, fraction=fraction, seed=seed,
        heads=self._latent_head(low_target), labels=labels,
        condition={"key": high_target, "source": "labels"},
        condition_dim=self.dims[high_target], num_steps=num_steps, pretraining=True)
    low_job = self._train(f"pretrain/s{seed}/{tag}", self.paths.pretrain(tag, seed), low)
    return high_job, low_job

  def finetune(self, method: str, fraction: float, seed: int) -> tuple[str, dict]:
    """Adds `method`'s runs at (fraction, seed); returns (fine-tuning job, test-time spec)."""
    p, workdir = self.paths, self.paths.finetune(method, fraction, seed)
    name = f"finetune/{method}@{fraction:g}/s{seed}"
    if method == "baku":
      job = self._train(name, workdir, self._finetune_config(role="flat", fraction=fraction,
                                                             seed=seed))
      return job, {"kind": "flat", "workdir": workdir}
    if method in FLAT_TARGETS:
      init = self.pretrain_flat(FLAT_TARGETS[method], seed)
      cfg = self._finetune_config(role="flat", fraction=fraction, seed=seed,
                                  init_from=self.jobs[init].kwargs["workdir"])
      return self._train(name, workdir, cfg, deps=(init,)), {"kind": "flat", "workdir": workdir}
    high_target, low_target = HILAM_LEVELS[method]
    if method == "hilam_no_pretrain":
      # Pretraining only on the pseudo-labels of the fraction's own demonstration video.
      high_job, low_job = self.pretrain_levels(
          high_target, low_target, seed=seed, dataset=self.data["demos"],
          labels_dir=p.labels_demos, skills_dir=p.skills_demos, fraction=fraction,
          num_steps=self.config.policy.demo_pretrain_steps,
          prefix=f"demos_{round(100 * fraction)}pct_")
    else:
      high_job, low_job = self.pretrain_levels(
          high_target, low_target, seed=seed, dataset=self.video,
          labels_dir=p.labels_video, skills_dir=p.skills_video,
          num_steps=self.config.policy.pretrain_steps)
    high_dir = self.jobs[high_job].kwargs["workdir"]
    cfg = self._finetune_config(
        role="low", fraction=fraction, seed=seed, init_from=self.jobs[low_job].kwargs["workdir"],
        condition={"key": high_target, "source": "high_policy", "high_workdir": high_dir,
                   "high_head": "skill"},
        condition_dim=self.dims[high_target])
    job = self._train(name, workdir, cfg, deps=(high_job, low_job))
    return job, {"kind": "hierarchical", "high": high_dir, "low": workdir}

  def evaluation(self, method: str, fraction: float, seed: int) -> str:
    """Adds the fine-tuning of (method, fraction, seed) and its evaluation; returns the job."""
    train_job, spec = self.finetune(method, fraction, seed)
    name = f"evaluate/{method}@{fraction:g}/s{seed}"
    e = self.config.eval
    eval_config = {"num_episodes": e.num_episodes, "num_envs": e.num_envs, "seed": e.seed,
                   "max_steps": e.max_steps, "num_videos": e.num_videos if seed == 0 else 0,
                   "actions": e.actions, "skill_use_batches": e.skill_use_batches}
    # World-specific settings, passed when the config has them (e.g. a suite's task ids).
    eval_config.update({k: e[k] for k in OPTIONAL_EVAL_KEYS if k in e})
    self.world.check_eval_config(eval_config)
    self.jobs[name] = jobs.Job(name, evaluate_job, {
        "out_dir": self.paths.evaluation_dir(method, fraction, seed), "spec": spec,
        "eval_config": eval_config, "world": self.world.name, "level": self.config.level,
        "demos_dir": self.data["demos"],
        "high_every": self.config.policy.high_every, "cache_dir": self.cache_dir},
                               deps=(train_job,))
    return name


def finetune_steps(policy: Any, fraction: float) -> int:
  """Fine-tuning steps at a demo fraction: `finetune_steps` with all the demos, in proportion
  to the demos below that, and never fewer than `min_finetune_steps` (default: all
  `finetune_steps`)."""
  floor = policy.get("min_finetune_steps", None)
  floor = policy.finetune_steps if floor is None else floor
  return max(int(floor), round(fraction * policy.finetune_steps))


def cells(config: Any) -> list[tuple[str, float, int]]:
  """(method, fraction, seed) of every evaluated cell: the methods at every fraction and seed,
  the ablations at `ablation_fractions` (default: the largest fraction) and every seed, and
  `extra_seeds.seeds` for `extra_seeds.methods` at `extra_seeds.fractions` (more seeds where a
  claim's interval is closest to 0; each pretrains its own)."""
  out = [(m, f, s) for f in config.fractions for m in config.methods for s in config.seeds]
  ablation_fractions = tuple(config.ablation_fractions) or (max(config.fractions),)
  out += [(m, f, s) for f in ablation_fractions for m in config.ablations for s in config.seeds]
  return out + extra_cells(config)


def extra_cells(config: Any) -> list[tuple[str, float, int]]:
  """(method, fraction, seed) of the `extra_seeds` cells: its seeds for those of its methods and
  fractions the run has (so overriding `config.methods` needs no change to `extra_seeds`)."""
  extra = config.get("extra_seeds", None)
  if extra is None or not tuple(extra.seeds):
    return []
  seeds = tuple(extra.seeds)
  if set(seeds) & set(config.seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f"config.extra_seeds.seeds={seeds} must be distinct and not in "
                     f"config.seeds={tuple(config.seeds)}")
  methods = [m for m in extra.methods if m in (*config.methods, *config.ablations)]
  fractions = [f for f in extra.fractions if f in config.fractions]
  return [(m, f, s) for f in fractions for m in methods for s in seeds]


def aggregate(evaluations: dict[tuple[str, float, int], dict]) -> dict[str, dict[str, dict]]:
  """{method: {fraction: cell}}: per-seed success rates, their mean and 95% t-interval across
  seeds, and the pooled success rate of all episodes with its Wilson interval."""
  from hilam_jax.evaluation import stats  # pylint: disable=g-import-not-at-top
  grouped: dict[tuple[str, float], list[tuple[int, dict]]] = {}
  for (method, fraction, seed), result in evaluations.items():
    grouped.setdefault((method, fraction), []).append((seed, result))
  out: dict[str, dict[str, dict]] = {}
  for (method, fraction), rows in sorted(grouped.items()):
    rows.sort()
    if any("offline" in r for _, r in rows):  # no simulator: the held-out action error
      errors = [r["action_error"] for _, r in rows]
      cell = dict(stats.seed_interval(errors), seeds=[s for s, _ in rows],
                  offline=rows[0][1]["offline"], metric=rows[0][1]["metric"])
      cell["action_error"] = cell["mean"]
      out.setdefault(method, {})[f"{fraction:g}"] = cell
      continue
    rates = [r["success_rate"] for _, r in rows]
    successes = sum(round(r["success_rate"] * r["num_episodes"]) for _, r in rows)
    episodes = sum(r["num_episodes"] for _, r in rows)
    pooled_low, pooled_high = stats.wilson_interval(successes, episodes)
    cell = dict(stats.seed_interval(rates), seeds=[s for s, _ in rows],
                num_episodes_per_seed=[r["num_episodes"] for _, r in rows],
                pooled={"success_rate": successes / episodes, "ci_low": pooled_low,
                        "ci_high": pooled_high, "num_episodes": episodes})
    # The report's per-cell figure: the mean over seeds (success_rate), its t-interval.
    cell["success_rate"] = cell["mean"]
    uses = [r["skill_use"] for _, r in rows if "skill_use" in r]
    if uses:
      cell["skill_use"] = {k: sum(u[k] for u in uses) / len(uses) for k in uses[0]}
    out.setdefault(method, {})[f"{fraction:g}"] = cell
  return out


def _policies_and_evaluation(config: Any, paths: Paths, data: dict) -> dict:
  planner = Planner(config, paths, data, label_dims(paths))
  evaluation_jobs = {cell: planner.evaluation(*cell) for cell in cells(config)}
  graph = list(planner.jobs.values())
  logging.info("policies: %d jobs (%d training runs, %d evaluations) on %d worker(s)",
               len(graph), sum(n.startswith(("pretrain", "finetune")) for n in planner.jobs),
               len(evaluation_jobs), config.num_workers)
  results = jobs.run_jobs(graph, num_workers=config.num_workers,
                          worker_env=jobs.single_thread_env() if config.single_thread_workers
                          else None, what="policies")
  evaluations = {cell: results[name] for cell, name in evaluation_jobs.items()}
  train_metrics = {n: r for n, r in results.items() if not n.startswith("evaluate/")}
  return {"success": aggregate(evaluations),
          "per_seed": [{"method": m, "fraction": f, "seed": s, **r}
                       for (m, f, s), r in evaluations.items()],
          "train_metrics": train_metrics, "label_dims": planner.dims}


# ----------------------------------------------------------------------------- main


# Stages before the policies, in order: `config.stop_after` may name any of them.
STAGES = ("data", "lam", "labels", "skill_model", "skills")


@workdir_lock.releases_workdir_locks
def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole experiment in `workdir`; returns the results dict.

  With `config.stop_after` set to a name in `STAGES` it returns after that stage with the
  results so far ({"data": ..., "lam": ..., ...}: each stage's result and seconds, "data" only
  its result); running again with a later stage (or "") continues from there and reuses every
  finished stage. That is how the notebook "HiLAM in 15 minutes" walks through the pipeline.
  """
  from hilam_jax import report  # pylint: disable=g-import-not-at-top
  if config.stop_after not in ("", *STAGES):
    raise ValueError(f"stop_after={config.stop_after!r}: expected '' or one of "
                     + ", ".join(repr(s) for s in STAGES))
  zscored_targets(config.policy.get("latent_targets", None))  # refused before any work
  worlds.get_world(config.world)  # likewise an unknown world
  check_data_specs(config)  # and malformed data sources
  cells(config)  # and extra seeds that repeat config.seeds
  from hilam_jax.skill import trainer as skill_trainer  # pylint: disable=g-import-not-at-top
  skill_trainer.check_objective(config.skill)  # and a skill objective that cannot run
  workdir_lock.lock_workdir(workdir)  # a second main job on this workdir is refused here
  os.makedirs(workdir, exist_ok=True)
  run_info.write_run_info(workdir, config)
  paths = Paths(workdir)
  _worker_setup(os.path.join(workdir, "jax_cache"))
  done: dict[str, Any] = {}
  stages = (("data", "1_data", lambda: _generate(config, paths)),
            ("lam", "2_lam", lambda: _train_lam(config, paths, done["data"])),
            ("labels", "3_labels", lambda: _label(config, paths, done["data"])),
            ("skill_model", "4_skill_model", lambda: _train_skill_model(config, paths)),
            ("skills", "5_skills", lambda: _extract_and_score_skills(config, paths,
                                                                     done["data"])))
  for key, name, fn in stages:
    result = _stage(workdir, name, fn)
    done[key] = result["result"] if key == "data" else result
    if config.stop_after == key:
      return done
  data, lam, labels, skill, skills = (done[k] for k in STAGES)
  policies = _stage(workdir, "6_policies", lambda: _policies_and_evaluation(config, paths, data))
  results = {
      "world": config.world, "level": config.level, "seed": config.seed,
      "seeds": list(config.seeds), "data": data, "lam": lam, "labels": labels,
      "skill_model": skill, "skills": skills, "policies": policies["result"],
      "stage_seconds": {"lam": lam["seconds"], "labels": labels["seconds"],
                        "skill_model": skill["seconds"], "skills": skills["seconds"],
                        "policies": policies["seconds"]},
      "config": run_info.to_jsonable(config), "versions": run_info.package_versions(),
  }
  report.write_report(results, paths, config)
  return results

"""The skill-discovery jobs: `run_evaluation` (boundaries and probes of skill folders, over
seeds) and `run_ceilings` (oracle-count ceilings); each writes <name>.json and <name>.md.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from data_pipeline import statistics
from data_pipeline.episode_split import heldout_split
from hilam_jax.skill.discovery.baselines import ChangePointBaseline
from hilam_jax.skill.discovery.ceilings import ORACLE_SEGMENTERS, oracle_count_ceilings
from hilam_jax.skill.discovery.filmstrips import boundary_filmstrip
from hilam_jax.skill.discovery.inputs import GROUND_TRUTHS, load_skill_folder, read_ground_truth
from hilam_jax.skill.discovery.stages import evaluate_stage_heldout, subset
from hilam_jax.skill.discovery.subtask_probe import PROBE_LABELS, probe_report, trailing_mean
from hilam_jax.skill.discovery.summary import format_table, summarize_seeds


def run_evaluation(skills_dir: str | Sequence[str], dataset_dir: str, out_dir: str, *,
                   split: str = "val", tolerance: int = 2, num_filmstrips: int = 3,
                   labels_dir: str | None = None, probe_window: int | None = None,
                   change_point_methods: Sequence[str] = ("binseg", "pelt"),
                   ground_truth: str = "initial") -> dict[str, Any]:
  """Evaluates skill folders (one per seed) against ground truth; writes JSON, table, filmstrips.

  The held-out episodes of `split` are halved by `heldout_split` into validation and test
  (module docstring); figures are test-half figures, mean ± std over the skill folders.

  Args:
    skills_dir: output(s) of `experiments/extract_skills.py` (must cover `split`), e.g. the same
      setting trained with several seeds.
    dataset_dir: the RLDS dataset with `subtask/boundary` (the one the labels were made from).
    out_dir: receives skill_discovery.json, skill_discovery.md and filmstrip_<i>.png (the first
      skill folder's boundaries).
    split: the dataset's held-out split.
    tolerance: frames of slack when matching boundaries.
    num_filmstrips: episodes drawn (the first test-half ones in sorted-id order) as filmstrips.
    labels_dir: latent-action folder for the baselines (default: each skills manifest's).
    probe_window: frames of the trailing z^0 mean probed as "z0_mean"; None: the first folder's
      stage-2 mean chunk length on the validation half, rounded.
    change_point_methods: ruptures algorithms run as baselines.
    ground_truth: which subtasks are the truth (GROUND_TRUTHS): "initial" or "leaf".

  Returns:
    The dict written to skill_discovery.json: "results" (the first folder's per-stage results,
    `evaluate_stage_heldout` layout), "seeds" (per folder: results and probe), "summary"
    (`summarize_seeds`), "table".
  """
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top

  dirs = [skills_dir] if isinstance(skills_dir, str) else list(skills_dir)
  folders = [load_skill_folder(d, split, labels_dir) for d in dirs]
  ids = sorted(set.intersection(*(set(f[1]["s1"]) for f in folders)))
  val_ids, test_ids = heldout_split(ids)
  strip_ids = set(test_ids[:num_filmstrips])
  truth, frames, texts, types = read_ground_truth(dataset_dir, split, set(ids), strip_ids,
                                                  ground_truth)
  latent_cache: dict[str, tuple[dict, dict]] = {}
  per_seed = []
  for directory, (manifest, boundaries, skills, labels, rels) in zip(dirs, folders):
    if labels not in latent_cache:
      latents = {}
      for rel in rels:
        latents.update(labeling.read_shard(os.path.join(labels, rel)))
      lengths = {e: len(boundaries["s1"][e]) for e in ids}
      cut = {e: np.asarray(latents[e])[:lengths[e]] for e in ids if e in latents}
      fits = {m: (ChangePointBaseline(subset(cut, [e for e in val_ids if e in cut]), m),
                  ChangePointBaseline(subset(cut, [e for e in test_ids if e in cut]), m))
              for m in change_point_methods}
      latent_cache[labels] = (latents, fits)
    latents, fits = latent_cache[labels]
    results = {f"stage{stage[1]}": evaluate_stage_heldout(
        boundaries[stage], latents, truth, val_ids, test_ids, tolerance,
        change_point_methods=change_point_methods, change_points=fits)
               for stage in ("s1", "s2")}
    probes = {}
    labelled = [e for e in ids if e in types and e in latents]
    if types and labelled:
      window = probe_window or max(1, int(round(results["stage2"]["mean_chunk_length"])))
      features = {"z1": skills["s1"], "z2": skills["s2"], "z0": latents,
                  "z0_mean": {e: trailing_mean(latents[e], window) for e in labelled}}
      for level, to_label in PROBE_LABELS.items():
        labels_by_id = {e: np.array([to_label(x) for x in types[e][:len(boundaries["s1"][e])]])
                        for e in labelled}
        probes[level] = dict(probe_report(
            features, labels_by_id, [e for e in val_ids if e in labels_by_id],
            [e for e in test_ids if e in labels_by_id]), z0_mean_window=window)
    per_seed.append({"skills_dir": os.path.abspath(directory), "results": results,
                     "probe": probes.get("target"), "probe_type": probes.get("type"),
                     "skill_model": manifest.get("skill_model")})
  summary = summarize_seeds(per_seed)
  os.makedirs(out_dir, exist_ok=True)
  strips = []
  first_boundaries = folders[0][1]
  for i, episode_id in enumerate(sorted(strip_ids & set(frames))):
    length = len(first_boundaries["s1"][episode_id])
    strips.append(boundary_filmstrip(
        frames[episode_id][:length], truth[episode_id][:length],
        {"1": first_boundaries["s1"][episode_id], "2": first_boundaries["s2"][episode_id]},
        os.path.join(out_dir, f"filmstrip_{i}.png"),
        title=f"{episode_id}: \"{texts[episode_id]}\" ({length} frames)"))
  table = format_table(summary)
  report = {"skills_dirs": [os.path.abspath(d) for d in dirs],
            "dataset_dir": os.path.abspath(dataset_dir), "split": split, "tolerance": tolerance,
            "ground_truth": ground_truth,
            "heldout": {"validation_episodes": len(val_ids), "test_episodes": len(test_ids),
                        "rule": "sha256(episode_id) last hex digit even -> validation"},
            "skill_model": per_seed[0]["skill_model"], "results": per_seed[0]["results"],
            "seeds": per_seed, "summary": summary, "filmstrips": strips, "table": table}
  _write_report(out_dir, "skill_discovery", report,
                f"Skill discovery ({split} split halved into validation / test, tolerance "
                f"±{tolerance} frames, {ground_truth} subtasks)")
  return report


def run_ceilings(labels_dir: str, dataset_dir: str, out_dir: str, *, split: str = "val",
                 tolerance: int = 2, ground_truth: str = "initial") -> dict[str, Any]:
  """`oracle_count_ceilings` on the held-out test half for z^0, z-scored z^0 and the true actions
  (when the dataset has them: action-free video gets no action row).

  The latents come from the labeling job's folder, the ground truth and the actions from the
  dataset; every signal is cut to the latents' length (t < T - k). z-score statistics (and the
  continuous actions' ones) come from the validation half. Writes ceiling.json and ceiling.md.
  """
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  if ground_truth not in GROUND_TRUTHS:
    raise ValueError(f"ground_truth {ground_truth!r} not in {sorted(GROUND_TRUTHS)}")
  boundary_key = GROUND_TRUTHS[ground_truth][0]
  latents = labeling.read_labels(labels_dir)
  truth, actions = {}, {}
  for traj in reader.read_trajectories(dataset_dir, split=split):
    episode_id = traj["episode_id"][0].numpy().decode()
    if episode_id not in latents:
      continue
    if boundary_key not in traj.get("subtask", {}):
      raise ValueError(f"{dataset_dir} ({split}) has no subtask/{boundary_key} ground truth")
    length = len(latents[episode_id])
    truth[episode_id] = traj["subtask"][boundary_key].numpy().astype(bool)[:length]
    if "action" in traj:  # action-free video has none: no action row
      actions[episode_id] = traj["action"].numpy()[:length]
  if not truth:
    raise ValueError(f"no episode of {dataset_dir} ({split}) has labels in {labels_dir}")
  val_ids, test_ids = heldout_split(sorted(truth))
  z = {e: np.asarray(latents[e], np.float64) for e in truth}
  mean, std = _zscore_stats([z[e] for e in val_ids], next(iter(z.values())).shape[-1])
  signals = {"z0": z, "z0_zscore": {e: (v - mean) / std for e, v in z.items()}}
  if actions and len(actions) == len(truth):
    signals["action"] = _action_signal(actions, val_ids)
  test_truth = subset(truth, test_ids)
  results = oracle_count_ceilings({n: subset(s, test_ids) for n, s in signals.items()},
                                  test_truth, tolerance)
  lines = ["| signal | method | P | R | F1 | true segmentation's l2 cost / optimum | "
           "episodes where it is optimal |", "|---|---|---|---|---|---|---|"]
  for name, rows in results.items():
    for method in ORACLE_SEGMENTERS:
      r = rows[method]
      extra = (f"{r['gt_cost_ratio']:.2f} | {r['gt_optimal_share']:.2f}"
               if method == "exact_l2" else "– | –")
      lines.append(f"| {name} | {method} | {r['precision']:.3f} | {r['recall']:.3f} | "
                   f"{r['f1']:.3f} | {extra} |")
  table = "\n".join(lines)
  report = {"labels_dir": os.path.abspath(labels_dir), "dataset_dir": os.path.abspath(dataset_dir),
            "split": split, "tolerance": tolerance, "ground_truth": ground_truth,
            "test_episodes": len(test_ids), "results": results, "table": table}
  _write_report(out_dir, "ceiling", report,
                f"Oracle-count ceilings ({split} test half, ±{tolerance} frames, "
                f"{ground_truth} subtasks, {len(test_ids)} episodes)")
  return report


def _action_signal(actions: Mapping[str, np.ndarray], val_ids: Sequence[str]
                   ) -> dict[str, np.ndarray]:
  """Integer actions one-hot, continuous ones z-scored per dimension (validation statistics)."""
  first = np.asarray(next(iter(actions.values())))
  if np.issubdtype(first.dtype, np.integer):
    classes = 1 + max(int(np.max(a)) for a in actions.values() if np.size(a))
    return {e: np.eye(classes)[np.asarray(a).reshape(-1)] for e, a in actions.items()}
  flat = {e: np.asarray(a, np.float64).reshape(len(a), -1) for e, a in actions.items()}
  mean, std = _zscore_stats([flat[e] for e in val_ids], first.reshape(len(first), -1).shape[1])
  return {e: (a - mean) / std for e, a in flat.items()}


def _zscore_stats(arrays: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and std (+1e-6) of the rows of `arrays`; (0, 1) if they have none (a
  validation half too small to hold an episode)."""
  mean, std = statistics.per_dimension_mean_std(arrays, dim)
  return mean, std + 1e-6


def _jsonable(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def _write_report(out_dir: str, name: str, report: Mapping[str, Any], title: str) -> None:
  """<out_dir>/<name>.json (the report) and <name>.md (the title and report["table"])."""
  import json  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(report, f, indent=1, default=_jsonable)
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write(f"# {title}\n\n{report['table']}\n")

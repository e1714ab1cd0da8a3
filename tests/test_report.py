"""The experiment's statistics: cells over seeds, paired orderings, convergence verdicts, cells."""
import json
import math

import numpy as np
import pytest

from experiments.configs import main as main_config
from hilam_jax import experiment
from hilam_jax import report
from hilam_jax.evaluation import stats


def _result(rate: float, n: int = 100) -> dict:
  low, high = stats.wilson_interval(round(rate * n), n)
  return {"success_rate": rate, "num_episodes": n, "ci_low": low, "ci_high": high}


def test_aggregate_mean_t_interval_and_pooled_wilson():
  evaluations = {("baku", 0.1, s): _result(r) for s, r in ((0, 0.37), (1, 0.52), (2, 0.52))}
  evaluations[("baku", 1.0, 0)] = _result(0.9)
  cell = experiment.aggregate(evaluations)["baku"]["0.1"]
  assert cell["seeds"] == [0, 1, 2] and cell["values"] == [0.37, 0.52, 0.52]
  mean, std = np.mean([0.37, 0.52, 0.52]), np.std([0.37, 0.52, 0.52], ddof=1)
  # t_0.975 with 2 degrees of freedom in closed form: (2p - 1) / sqrt(2p(1 - p)) = 4.30265.
  half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * std / math.sqrt(3)
  np.testing.assert_allclose([cell["mean"], cell["ci_low"], cell["ci_high"]],
                             [mean, mean - half, mean + half], rtol=1e-6)
  assert cell["success_rate"] == cell["mean"]
  pooled = cell["pooled"]
  assert pooled["num_episodes"] == 300 and pooled["success_rate"] == pytest.approx(141 / 300)
  np.testing.assert_allclose((pooled["ci_low"], pooled["ci_high"]),
                             stats.wilson_interval(141, 300))
  single = experiment.aggregate(evaluations)["baku"]["1"]
  assert single["num_seeds"] == 1 and math.isnan(single["ci_low"])


def _per_seed(method, fraction, rates):
  return [{"method": method, "fraction": fraction, "seed": s, "success_rate": r}
          for s, r in enumerate(rates)]


def test_paired_difference_pairs_by_seed():
  rows = (_per_seed("hilam", 0.1, [0.6, 0.5, 0.7]) + _per_seed("baku", 0.1, [0.4, 0.45, 0.5])
          + _per_seed("baku", 1.0, [0.9, 0.9, 0.9]))
  diff = report.paired_difference(rows, "hilam", "baku", "0.1")
  np.testing.assert_allclose(diff["values"], [0.2, 0.05, 0.2], atol=1e-12)
  assert diff["seeds"] == [0, 1, 2]
  # A seed missing on one side is left out of the pairing.
  diff = report.paired_difference(rows[1:], "hilam", "baku", "0.1")
  assert diff["seeds"] == [1, 2]
  assert report.paired_difference(rows, "hilam", "flat_z0", "0.1") is None


def test_orderings_verdicts_and_significance():
  rows = (_per_seed("hilam", 0.1, [0.6, 0.62, 0.64]) + _per_seed("baku", 0.1, [0.4, 0.41, 0.42])
          + _per_seed("hilam_no_pretrain", 0.1, [0.7, 0.5, 0.6])
          + _per_seed("flat_z0", 0.1, [0.65, 0.7, 0.6]) + _per_seed("flat_z2", 0.1, [0.1] * 3))
  success = {m: {"0.1": {"mean": float(np.mean([r["success_rate"] for r in rows
                                                if r["method"] == m]))}}
             for m in ("hilam", "baku", "hilam_no_pretrain", "flat_z0", "flat_z2")}
  checks = {c["claim"]: c for c in report.orderings(success, rows, ["0.1"])}
  first = checks["HiLAM > BAKU at the lowest demo fraction (0.1)"]
  assert first["holds"] and first["significant"]
  flat = checks["hierarchy >= best flat latent pretraining at 0.1 (flat_z0)"]
  assert flat["holds"] is False and flat["right"] == "flat_z0"
  video = checks["video pretraining helps HiLAM at 0.1"]
  assert video["holds"] is True and video["significant"] is False  # +0.02 [wide]: contains 0
  assert not any("z̄^1" in c for c in checks)  # the ablation was not run


def test_flattened():
  falling = [(s, 1.0 - 0.1 * i) for i, s in enumerate(range(0, 1000, 100))]
  assert report.flattened(falling)["flattened"] is False
  flat = [(s, 1.0 if s < 500 else 0.5) for s in range(0, 1000, 100)]
  assert report.flattened(flat)["flattened"] is True
  rising = [(s, 0.5 + s / 1000) for s in range(0, 1000, 100)]
  verdict = report.flattened(rising)
  assert verdict["flattened"] is True and verdict["min_val_loss_step"] == 0
  assert report.flattened([(0, 1.0)])["flattened"] is None


def test_convergence_reads_every_run_including_linked_ones(tmp_path):
  """Runs linked in from another workdir (a shared pretraining folder) are reported too."""
  import os  # pylint: disable=g-import-not-at-top
  from hilam_jax.training import metrics  # pylint: disable=g-import-not-at-top
  shared, policies = tmp_path / "shared", tmp_path / "policies"
  for run, losses in ((shared / "s0" / "flat_z0", (1.0, 0.5)),
                      (policies / "demos_10pct" / "s0" / "baku", (1.0, 1.0))):
    writer = metrics.MetricWriter(str(run / "tensorboard"))
    for step, loss in zip((100, 200), losses):
      writer.write_scalars(step, {"eval/loss": loss})
    writer.close()
  os.symlink(shared, policies / "pretrain")
  verdicts = report.convergence(str(policies))
  assert sorted(verdicts) == ["demos_10pct/s0/baku", "pretrain/s0/flat_z0"]
  assert verdicts["pretrain/s0/flat_z0"]["flattened"] is False  # fell by half
  assert verdicts["demos_10pct/s0/baku"]["flattened"] is True
  assert not report._early_stopping_text(verdicts)  # pylint: disable=protected-access
  # An early-stopped run's marker (written by the training loop) is read and summarised.
  rule = {"metric": "action/accuracy", "mode": "max", "best_step": 100, "best_value": 0.9,
          "stopped_at": 200}
  (policies / "demos_10pct" / "s0" / "baku" / "checkpoints").mkdir()
  with open(policies / "demos_10pct" / "s0" / "baku" / "checkpoints" / "early_stopping.json",
            "w") as f:
    json.dump(rule, f)
  verdicts = report.convergence(str(policies))
  assert verdicts["demos_10pct/s0/baku"]["early_stopping"] == rule
  assert "early_stopping" not in verdicts["pretrain/s0/flat_z0"]
  assert report._early_stopping_text(verdicts)[1] == (  # pylint: disable=protected-access
      "Early stopping on validation action/accuracy: 1 runs, stopped at steps 200-200, kept "
      "steps 100-100 (per run in results.json, convergence).")


def test_cells_cover_methods_fractions_seeds_and_ablations():
  config = main_config.get_config("default")
  config.methods, config.fractions, config.seeds = ("baku", "hilam"), (0.1, 1.0), (0, 1)
  config.ablations, config.ablation_fractions = ("hilam_s1_z0",), (0.1,)
  config.extra_seeds.seeds = ()  # test_extra_seeds_add_cells_only_where_asked
  cells = experiment.cells(config)
  assert len(cells) == 10  # 2 methods x 2 fractions x 2 seeds + 1 ablation x 1 fraction x 2 seeds
  assert set(cells) == {
      ("baku", 0.1, 0), ("baku", 0.1, 1), ("baku", 1.0, 0), ("baku", 1.0, 1),
      ("hilam", 0.1, 0), ("hilam", 0.1, 1), ("hilam", 1.0, 0), ("hilam", 1.0, 1),
      ("hilam_s1_z0", 0.1, 0), ("hilam_s1_z0", 0.1, 1)}
  # No ablation fractions given: the ablations run at the largest fraction only.
  config.fractions, config.ablation_fractions = (0.5, 0.1, 0.3), ()
  assert sorted(c for c in experiment.cells(config) if c[0] == "hilam_s1_z0") == [
      ("hilam_s1_z0", 0.5, 0), ("hilam_s1_z0", 0.5, 1)]


def test_extra_seeds_add_cells_only_where_asked(tmp_path):
  config = main_config.get_config("default")
  base = experiment.cells(config)
  assert tuple(config.seeds) == (0, 1, 2) and tuple(config.extra_seeds.seeds) == (3, 4)
  extra = [c for c in base if c[2] in (3, 4)]
  assert sorted(extra) == sorted((m, 0.1, s) for m in ("baku", "flat_z0", "flat_z2", "hilam")
                                 for s in (3, 4))
  # Their runs: each extra seed pretrains its own (flat z^0, pi^h = flat z̄^2, pi^l), nothing
  # at 100% and no ablation.
  planner = experiment.Planner(config, experiment.Paths(str(tmp_path)),
                               {"video": "/v", "demos": "/d"}, {"z0": 16, "s1": 64, "s2": 96})
  for cell in base:
    planner.evaluation(*cell)
  seed3 = sorted(n for n in planner.jobs if "s3" in n.split("/"))
  assert seed3 == ["evaluate/baku@0.1/s3", "evaluate/flat_z0@0.1/s3", "evaluate/flat_z2@0.1/s3",
                   "evaluate/hilam@0.1/s3", "finetune/baku@0.1/s3", "finetune/flat_z0@0.1/s3",
                   "finetune/flat_z2@0.1/s3", "finetune/hilam@0.1/s3", "pretrain/s3/flat_z0",
                   "pretrain/s3/high_s2", "pretrain/s3/low_s2_z0"]
  assert planner.jobs["pretrain/s3/high_s2"].kwargs["config"]["seed"] == 3
  # Every variant but the default runs without them.
  for variant in ("quick", "large", "smoke", "metaworld", "libero_long", "libero_smoke"):
    assert not tuple(main_config.get_config(variant).extra_seeds.seeds), variant
  # Methods and fractions the run does not have are left out; seeds of config.seeds refused.
  def extra_text():  # the report's text for the cells this config evaluates
    rows = [{"method": m, "fraction": f, "seed": s} for m, f, s in experiment.cells(config)]
    return report._extra_seeds_text(config, rows)  # pylint: disable=protected-access
  assert extra_text() == ", and [3, 4] for baku, flat_z0, flat_z2, hilam at 0.1"
  config.methods = ("baku", "hilam")
  assert sorted(c for c in experiment.cells(config) if c[2] in (3, 4)) == [
      ("baku", 0.1, 3), ("baku", 0.1, 4), ("hilam", 0.1, 3), ("hilam", 0.1, 4)]
  assert extra_text() == ", and [3, 4] for baku, hilam at 0.1"
  config.extra_seeds.fractions = (0.3,)
  assert not [c for c in experiment.cells(config) if c[2] in (3, 4)]
  assert not extra_text()
  config.extra_seeds.seeds = (2, 3)
  with pytest.raises(ValueError, match=r"extra_seeds.seeds=\(2, 3\) must be distinct and not "
                                       r"in config.seeds=\(0, 1, 2\)"):
    experiment.cells(config)


def test_planner_shares_pretraining_within_a_seed(tmp_path):
  """One pretraining run per (target, seed), every fine-tuning run depends on its own seed's;
  the fine-tunes at 10% stop early."""
  config = main_config.get_config("default")
  config.ablations = ("hilam_no_pretrain", "hilam_s1_z0")  # the z̄^1 one: `large`'s
  paths = experiment.Paths(str(tmp_path))
  data = {"video": "/data/video", "demos": "/data/demos"}
  planner = experiment.Planner(config, paths, data, {"z0": 16, "s1": 64, "s2": 96})
  for cell in experiment.cells(config):
    planner.evaluation(*cell)
  names = set(planner.jobs)
  pretrain = sorted(n for n in names if n.startswith("pretrain/s0/") and "demos_" not in n)
  assert pretrain == ["pretrain/s0/flat_z0", "pretrain/s0/high_s1", "pretrain/s0/high_s2",
                      "pretrain/s0/low_s1_z0", "pretrain/s0/low_s2_z0"]
  # Flat BAKU -> z̄^2 is pi^h's pretraining: one run, its body fine-tuned as a flat policy.
  flat_z2 = planner.jobs["finetune/flat_z2@0.1/s1"]
  assert flat_z2.deps == ("pretrain/s1/high_s2",)
  assert flat_z2.kwargs["config"]["init_from"] == paths.pretrain("high_s2", 1)
  assert flat_z2.kwargs["config"]["role"] == "flat"
  hilam = planner.jobs["finetune/hilam@0.1/s1"]
  assert set(hilam.deps) == {"pretrain/s1/high_s2", "pretrain/s1/low_s2_z0"}
  cfg = hilam.kwargs["config"]
  assert cfg["seed"] == 1 and cfg["role"] == "low" and cfg["lang_for_low"] is False
  assert cfg["condition"]["source"] == "high_policy"
  assert cfg["condition"]["high_workdir"] == paths.pretrain("high_s2", 1)
  assert cfg["init_from"] == paths.pretrain("low_s2_z0", 1)
  assert cfg["chunk"] == 1 and cfg["data"]["augment"] is False
  no_pretrain = planner.jobs["finetune/hilam_no_pretrain@0.1/s2"]
  assert set(no_pretrain.deps) == {"pretrain/s2/demos_10pct_high_s2",
                                   "pretrain/s2/demos_10pct_low_s2_z0"}
  demo_high = planner.jobs["pretrain/s2/demos_10pct_high_s2"].kwargs["config"]
  assert demo_high["data"]["train"][0]["dataset_dir"] == "/data/demos"
  assert demo_high["data"]["episode_fraction"] == 0.1
  assert planner.jobs["evaluate/baku@1/s0"].deps == ("finetune/baku@1/s0",)
  for name, job in planner.jobs.items():
    if name.startswith(("pretrain", "finetune")):
      early = job.kwargs["config"]["early_stopping"]
      if name.startswith("finetune") and "@0.1/" in name:
        assert early == {"metric": "action/accuracy", "mode": "max", "patience": 1000}, name
      else:
        assert not early["metric"], name
  # Every method trains the same network shape (encoder and trunk).
  models = {tuple(sorted((k, str(v)) for k, v in j.kwargs["config"]["model"].items()
                         if k not in ("condition_dim",)))
            for n, j in planner.jobs.items() if n.startswith(("pretrain", "finetune"))}
  assert len(models) == 1


def test_without_a_simulator_each_cell_is_the_held_out_action_error(tmp_path):
  import dataclasses
  import json
  import os
  from hilam_jax import worlds
  libero = worlds.get_world("libero")
  assert libero.simulator_missing() is None  # the test extra installs it
  absent = dataclasses.replace(libero, simulator_modules=("no_such_simulator_module",))
  assert absent.simulator_missing() == ("the libero simulator is not installed (no module "
                                        "'no_such_simulator_module'; pip install -e \".[libero]\")")
  # evaluate_job, offline: the fine-tuned run's final validation action MSE (HiLAM: pi^l's).
  evaluations = {}
  for seed, mse in enumerate((0.25, 0.125, 0.5)):
    low = tmp_path / f"low{seed}"
    low.mkdir()
    (low / "final_metrics.json").write_text(json.dumps({"action/mse": mse, "loss": 9.0}))
    spec = {"kind": "hierarchical", "high": str(tmp_path / "high"), "low": str(low)}
    out_dir = str(tmp_path / f"eval{seed}")
    result = experiment.evaluate_job(out_dir, spec, {"offline": True}, "libero", "libero_10",
                                     demos_dir="/unused", high_every=1)
    assert result == {"offline": "eval.offline is set", "action_error": mse,
                      "metric": "action MSE"}
    with open(os.path.join(out_dir, "result.json")) as f:
      assert json.load(f) == result
    evaluations[("hilam", 1.0, seed)] = result
  cell = experiment.aggregate(evaluations)["hilam"]["1"]
  assert cell["action_error"] == pytest.approx(0.875 / 3) and cell["values"] == [0.25, 0.125, 0.5]
  assert cell["ci_low"] < cell["mean"] < cell["ci_high"] and "success_rate" not in cell
  # Categorical worlds: 1 - accuracy.
  flat = tmp_path / "flat"
  flat.mkdir()
  (flat / "final_metrics.json").write_text(json.dumps({"action/accuracy": 0.75}))
  result = experiment.offline_result({"kind": "flat", "workdir": str(flat)},
                                     worlds.get_world("babyai"), "why")
  assert result["action_error"] == 0.25 and result["metric"] == "action error rate"
  assert report._cell(cell).startswith("0.2917 [")
  # The report says why there is no success rate and tabulates the errors.
  config = main_config.get_config("libero_smoke")
  config.methods = ("hilam",)
  paths = experiment.Paths(str(tmp_path / "run"))
  results = {"policies": {"success": {"hilam": {"1": cell}}, "train_metrics": {},
                          "per_seed": [{"method": "hilam", "fraction": 1.0, "seed": s, **r}
                                       for (_, _, s), r in evaluations.items()]},
             "skills": {"result": {}}, "stage_seconds": {},
             "data": {"video_summary": {"train": {"episodes": 5}},
                      "demos_summary": {"train": {"episodes": 3}}}}
  with open(report.write_report(results, paths, config)) as f:
    text = f.read()
  assert "No success rates: eval.offline is set." in text
  assert "## Action MSE vs demonstrations" in text
  assert f"| {report.LABELS['hilam']} | {report._cell(cell)} |" in text
  assert "orderings" not in text.replace("orderings are not checked", "")
  assert text.startswith("# HiLAM data-efficiency experiment: libero_10\n")
  config.level = ""  # every task of the demos: the title names the world
  with open(report.write_report(results, paths, config)) as f:
    assert f.read().startswith("# HiLAM data-efficiency experiment: libero\n")

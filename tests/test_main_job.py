"""Smoke tests of the main job (the whole experiment) end to end: its report, resuming, and a
kill -9 in the policy stage."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hilam_jax.evaluation import stats
from tests.conftest import relocated_copy
from tests.conftest import run_module
from tests.conftest import SMOKE_ENV
from tests.conftest import SMOKE_MAIN_JOB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_runs_every_stage_and_writes_the_report(smoke_main_job):
  from hilam_jax import experiment
  with open(os.path.join(smoke_main_job, "report", "results.json")) as f:
    results = json.load(f)
  success = results["policies"]["success"]
  assert set(success) == set(experiment.METHODS)
  per_seed = {(r["method"], r["seed"]): r for r in results["policies"]["per_seed"]}
  assert set(per_seed) == {(m, 0) for m in experiment.METHODS}
  for method in experiment.METHODS:
    cell, run = success[method]["1"], per_seed[(method, 0)]
    # A rate of k successes in 4 episodes with its Wilson interval, as the harness defines them;
    # the cell of one seed is that seed's rate, pooled over its 4 episodes.
    k = round(run["success_rate"] * 4)
    assert run["num_episodes"] == 4 and run["success_rate"] == k / 4
    np.testing.assert_allclose((run["ci_low"], run["ci_high"]), stats.wilson_interval(k, 4),
                               atol=1e-12)
    assert cell["values"] == [k / 4] and cell["seeds"] == [0] and cell["mean"] == k / 4
    assert cell["pooled"]["num_episodes"] == 4
  # pi^l's use of its skill is measured for the hierarchical methods only.
  assert "skill_use" in success["hilam"]["1"] and "skill_use" not in success["baku"]["1"]
  assert {o["claim"].split(" at ")[0] for o in results["orderings"]} >= {
      "HiLAM > BAKU", "hierarchy >= best flat latent pretraining"}
  assert results["data"]["video_summary"]["train"]["episodes"] == 6
  assert results["data"]["demos_summary"]["train"]["episodes"] == 4
  assert set(results["skills"]["result"]["discovery"]) == {"stage1", "stage2"}
  # The ceilings: z^0 of both datasets, the true actions of the demos (the video has none).
  ceiling = results["skills"]["result"]["ceiling"]
  assert set(ceiling["video"]) == {"z0", "z0_zscore"}
  assert set(ceiling["demos"]) == {"z0", "z0_zscore", "action"}
  for signals in ceiling.values():
    for rows in signals.values():
      # Told each episode's true count, the exact segmenter predicts that many boundaries, so
      # P = R = F1 = matched / true boundaries.
      exact = rows["exact_l2"]
      assert exact["predicted"] == exact["ground_truth"] == rows["boundaries"], rows
      found = exact["true_positives"] / rows["boundaries"] if rows["boundaries"] else 0.0
      np.testing.assert_allclose([exact["precision"], exact["recall"], exact["f1"]], found,
                                 rtol=1e-12)
  assert "jax" in results["versions"] and results["seeds"] == [0]
  # Every policy run's validation curve is in the report's convergence section.
  assert results["convergence"] and all(c["eval_loss"] for c in results["convergence"].values())
  for name in ("report.md", "success_vs_demos.png", "training_curves.png"):
    with open(os.path.join(smoke_main_job, "report", name), "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else head
  videos = os.listdir(os.path.join(smoke_main_job, "evaluation", "hilam_1", "s0", "videos"))
  assert videos and all(v.endswith(".gif") for v in videos)
  with open(os.path.join(smoke_main_job, "run_info.json")) as f:
    info = json.load(f)
  from experiments.configs import main as main_config
  assert info["config"]["level"] == main_config.LEVEL
  assert "tensorflow-datasets" in info["versions"]


def test_main_job_resumes_without_redoing_stages(smoke_main_job, tmp_path):
  workdir = relocated_copy(smoke_main_job, str(tmp_path / "main"))
  stages = sorted(os.listdir(os.path.join(workdir, "stages")))
  before = {s: os.path.getmtime(os.path.join(workdir, "stages", s)) for s in stages}
  out = run_module([*SMOKE_MAIN_JOB, f"--workdir={workdir}"], env=SMOKE_ENV)
  assert out.stderr.count("done before, reusing") == len(stages) == 6
  assert before == {s: os.path.getmtime(os.path.join(workdir, "stages", s)) for s in stages}


def _policy_runs_finished(workdir):
  """Policy training runs of a main-job workdir that have written their final metrics."""
  found = []
  for root, _, files in os.walk(os.path.join(workdir, "policies")):
    found += [root] * ("final_metrics.json" in files)
  return found


def _timeless(value):
  """A results.json value without its wall-clock fields ("seconds", "train_seconds", ...)."""
  if isinstance(value, dict):
    return {k: _timeless(v) for k, v in value.items() if not k.endswith("seconds")}
  if isinstance(value, list):
    return [_timeless(v) for v in value]
  return value


def test_main_job_killed_in_the_policy_stage_resumes_to_the_same_results(smoke_main_job,
                                                                       tmp_path):
  """kill -9 of the whole job (scheduler and policy workers) once its first policy run has
  finished, then the same command: the report's success rates, every policy run's validation
  curve and the skill-discovery figures equal the uninterrupted run's exactly (same machine,
  same computation). The killed job starts from a copy of the uninterrupted one whose policy
  stage and everything after it are removed (stages 1-5 are the same computation; their own
  kill -9 resumes are tested with their trainers)."""
  workdir = relocated_copy(smoke_main_job, str(tmp_path / "main"), drop=(
      "policies", "evaluation", "report", os.path.join("stages", "6_policies.json")))
  command = [sys.executable, "-m", *SMOKE_MAIN_JOB, f"--workdir={workdir}"]
  with open(tmp_path / "killed.log", "w") as log:
    job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, start_new_session=True,
                           env=SMOKE_ENV)
    deadline = time.monotonic() + 1500
    while not _policy_runs_finished(workdir) and job.poll() is None:
      assert time.monotonic() < deadline, "no policy run finished in time"
      time.sleep(0.5)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
  assert job.returncode == -signal.SIGKILL, open(tmp_path / "killed.log").read()[-3000:]
  assert not os.path.exists(os.path.join(workdir, "report", "results.json"))
  run_module(command[2:], timeout=1800, env=SMOKE_ENV)  # the reference's flags (SMOKE_ENV)
  results = []
  for directory in (smoke_main_job, workdir):
    with open(os.path.join(directory, "report", "results.json")) as f:
      results.append(_timeless(json.loads(f.read().replace(directory, "<workdir>"))))
  reference, resumed = results
  assert resumed["policies"]["per_seed"] == reference["policies"]["per_seed"]
  assert resumed["policies"]["success"] == reference["policies"]["success"]
  assert resumed["convergence"] == reference["convergence"]
  assert resumed["skills"]["result"]["discovery"] == reference["skills"]["result"]["discovery"]


def test_finetune_steps_scale_with_the_demos_above_a_floor():
  from experiments.configs import main as main_config  # pylint: disable=g-import-not-at-top
  from hilam_jax import experiment  # pylint: disable=g-import-not-at-top
  policy = main_config.get_config().policy
  assert (policy.finetune_steps, policy.min_finetune_steps) == (5000, 2500)
  assert experiment.finetune_steps(policy, 1.0) == 5000
  assert experiment.finetune_steps(policy, 0.7) == 3500
  assert experiment.finetune_steps(policy, 0.1) == 2500  # the floor
  policy.min_finetune_steps = None  # no floor given: every fraction trains finetune_steps
  assert experiment.finetune_steps(policy, 0.1) == 5000


@pytest.mark.parametrize("spec, zscored", [(None, set()), ("zscore", {"z0", "s1", "s2"}),
                                            ("zscore:z0", {"z0"}), ("zscore:z0,s2", {"z0", "s2"})])
def test_latent_targets_zscore_exactly_the_named_pretraining_targets(spec, zscored):
  from experiments.configs import main as main_config  # pylint: disable=g-import-not-at-top
  from hilam_jax import experiment  # pylint: disable=g-import-not-at-top
  config = main_config.get_config()
  config.policy.latent_targets = spec
  config.ablations = ("hilam_no_pretrain", "hilam_s1_z0")  # a z̄^1 target too (`large`'s)
  planner = experiment.Planner(config, experiment.Paths("/nonexistent"),
                               {"video": "/v", "demos": "/d"}, {"z0": 16, "s1": 8, "s2": 8})
  for cell in experiment.cells(config):
    planner.evaluation(*cell)
  heads = [h for name, job in planner.jobs.items() if name.startswith("pretrain/")
           for h in job.kwargs["config"]["heads"].values()]
  assert {h["target"] for h in heads} == {"z0", "s1", "s2"}  # every target is pretrained
  for head in heads:
    assert head.get("normalize") == ("zscore" if head["target"] in zscored else None), head


@pytest.mark.parametrize("spec", ["minmax", "zscore:", "zscore:z3", "zscore:z0,x"])
def test_latent_targets_refused_before_any_work(spec, tmp_path):
  from experiments.configs import main as main_config  # pylint: disable=g-import-not-at-top
  from hilam_jax import experiment  # pylint: disable=g-import-not-at-top
  config = main_config.get_config()
  config.policy.latent_targets = spec
  with pytest.raises(ValueError, match="latent_targets"):
    experiment.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")

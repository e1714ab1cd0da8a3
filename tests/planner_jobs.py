"""The main job's policy job graph as plain JSON: every job the `experiment.Planner` builds for a
main config variant (fixed paths, data folders and label sizes), for comparing the configs the
experiment trains and evaluates with across code changes (tests/test_worlds.py).

  # rewrite the fixture (only when a change of the configs is intended)
  python -m tests.planner_jobs --out=tests/data/planner_jobs_babyai.json

It uses only names that the experiment module had before the world adapters (Planner, Paths,
cells), so it also runs against older code (how the fixture was captured).
"""
import argparse
import hashlib
import json

VARIANTS = ("default", "smoke")
DATA = {"video": "/data/video", "demos": "/data/demos"}
DIMS = {"z0": 16, "s1": 64, "s2": 96}


def planner_jobs(variant: str, config=None) -> dict[str, dict]:
  """{job name: {"fn", "kwargs", "deps"}} of every job of `variant` (or of `config`)."""
  from experiments.configs import main as main_config  # pylint: disable=g-import-not-at-top
  from hilam_jax import experiment  # pylint: disable=g-import-not-at-top
  config = main_config.get_config(variant) if config is None else config
  planner = experiment.Planner(config, experiment.Paths("/w"), dict(DATA), dict(DIMS))
  for cell in experiment.cells(config):
    planner.evaluation(*cell)
  return {name: json.loads(json.dumps({"fn": job.fn.__name__, "kwargs": dict(job.kwargs),
                                       "deps": list(job.deps)}))
          for name, job in planner.jobs.items()}


def digest(job: dict) -> str:
  """sha256 of the job's JSON (key order included: the configs' field order is kept too)."""
  return hashlib.sha256(json.dumps(job).encode()).hexdigest()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  out = parser.parse_args().out
  # The smoke graph in full (readable diffs), the default graph as one digest per job.
  fixture = {"smoke": planner_jobs("smoke"),
             "default": {name: digest(job) for name, job in planner_jobs("default").items()}}
  with open(out, "w") as f:
    json.dump(fixture, f, indent=1)
    f.write("\n")


if __name__ == "__main__":
  main()

"""Success rate vs fraction of demos, drawn by the report's own plotting function.

Reads either the main job's `report/results.json` or a small JSON of per-seed cells and draws
the plot the main job writes as `report/success_vs_demos.png` (`hilam_jax.report._plot_success`):

  python -m experiments.plot_results --results=runs/main/report/results.json \
      --out=runs/main/report/success_vs_demos_redrawn.png
  python -m experiments.plot_results --results=docs/results/main_6b38157.json \
      --out=docs/results/success_vs_demos_6b38157.png

A JSON of cells is {"fractions": [0.1, 1.0], "success": {method: {"0.1": [success per training
seed], "1": [...]}}}; other top-level keys (e.g. "commit", "command") are ignored. Each cell's
mean and 95% t-interval across seeds are computed as the main job computes them
(`hilam_jax.evaluation.stats.seed_interval`).
"""
import json
import os

from absl import app
from absl import flags

_RESULTS = flags.DEFINE_string(
    "results", None, "The main job's results.json, or a JSON of per-seed cells.", required=True)
_OUT = flags.DEFINE_string("out", None, "Where to write the PNG.", required=True)


def cells(results: dict) -> tuple[dict, list[str]]:
  """(success {method: {fraction: cell}}, fractions as the report names them) of either input."""
  from hilam_jax.evaluation import stats  # pylint: disable=g-import-not-at-top
  if "policies" in results:  # the main job's results.json
    fractions = [f"{float(f):g}" for f in results["config"]["fractions"]]
    return results["policies"]["success"], fractions
  fractions = [f"{float(f):g}" for f in results["fractions"]]
  success = {}
  for method, by_fraction in results["success"].items():
    success[method] = {f"{float(f):g}": stats.seed_interval(values)
                       for f, values in by_fraction.items()}
  return success, fractions


def plot(results_path: str, out: str) -> None:
  """Reads `results_path` (either input) and writes the plot to `out`."""
  from hilam_jax import report  # pylint: disable=g-import-not-at-top
  with open(results_path) as f:
    success, fractions = cells(json.load(f))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  report._plot_success(success, fractions, out)  # pylint: disable=protected-access


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  plot(_RESULTS.value, _OUT.value)
  print(_OUT.value)


if __name__ == "__main__":
  app.run(main)

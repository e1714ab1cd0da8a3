"""experiments/plot_results.py: both inputs give the report's cells and a PNG."""
import json
import math

from experiments import plot_results


def test_cells_json_gives_the_main_jobs_cells_and_a_png(tmp_path):
  path = tmp_path / "cells.json"
  path.write_text(json.dumps({"commit": "x", "fractions": [0.1, 1.0], "success": {
      "baku": {"0.1": [0.24, 0.13, 0.23], "1": [0.99, 0.98, 0.99]}}}))
  success, fractions = plot_results.cells(json.loads(path.read_text()))
  assert fractions == ["0.1", "1"]
  cell = success["baku"]["0.1"]
  # README table: 0.20 [0.05, 0.35]
  assert [round(cell[k], 2) for k in ("mean", "ci_low", "ci_high")] == [0.20, 0.05, 0.35]
  out = tmp_path / "plot" / "success.png"
  plot_results.plot(str(path), str(out))
  assert out.stat().st_size > 0


def test_results_json_is_read_as_the_report_stores_it():
  cell = {"values": [0.5], "mean": 0.5, "ci_low": math.nan, "ci_high": math.nan}
  results = {"config": {"fractions": [0.1, 1.0]}, "policies": {"success": {"baku": {"1": cell}}}}
  success, fractions = plot_results.cells(results)
  assert fractions == ["0.1", "1"] and success["baku"]["1"] is cell

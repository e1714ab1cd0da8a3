"""Smoke test of experiments/benchmark_uniskill.py at the tiny test sizes (`--small`): it builds,
saves and converts the references, times every (row, side, batch size), writes them with finite
positive throughputs and agreeing outputs, and its memory probe runs in a fresh process."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# The figures are not looked at here: XLA's CPU backend optimisation is most of the tiny
# models' compile time on the shared machine, and off it they agree just as well.
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
           XLA_FLAGS="--xla_backend_optimization_level=0")


def _run(*flags):
  proc = subprocess.run([sys.executable, "-m", "experiments.benchmark_uniskill", "--small",
                         *flags], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout


def test_benchmark_uniskill_small(tmp_path):
  out = tmp_path / "bench.json"
  text = _run("--repeats=1", "--batch_sizes=1", "--memory=false", f"--workdir={tmp_path}",
              f"--out_json={out}")
  assert "| row | B | side | pairs/s |" in text
  results = json.loads(out.read_text())
  rows = {(r["row"], r["batch_size"]): r["sides"] for r in results["results"]}
  assert set(rows) == {("idm", 1), ("depth+idm", 1)}
  for (row, _), sides in rows.items():
    assert set(sides) == {"torch", "flax_f32", "flax_bf16"}, row
    for side, figures in sides.items():
      assert figures["finite"], (row, side)
      # One timed call: its time is the median, and the throughput is the batch over it.
      assert len(figures["seconds_all"]) == 1
      assert figures["seconds_median"] == figures["seconds_all"][0] > 0
      assert math.isfinite(figures["pairs_per_second"])
      assert figures["pairs_per_second"] == pytest.approx(1 / figures["seconds_median"],
                                                          rel=1e-12)
      assert f"| {row} | 1 | {side} | {figures['pairs_per_second']:.2f} |" in text
    assert sides["flax_f32"]["max_relative_error_vs_torch"] < 1e-3, row  # the same computation
    assert sides["flax_bf16"]["max_relative_error_vs_torch"] < 5e-2, row
    for side in ("flax_f32", "flax_bf16"):
      assert sides[side]["ratio_to_torch"] == pytest.approx(
          sides[side]["pairs_per_second"] / sides["torch"]["pairs_per_second"], rel=1e-12)
  assert results["idm_config"]["image_size"] == 64 and "torch" in results["versions"]

  # The memory probe alone, in a fresh process, on the weights the run left in tmp_path.
  line = _run("--memory_probe=idm:flax_f32:1", f"--workdir={tmp_path}").splitlines()[-1]
  memory = json.loads(line.removeprefix("MEMORY "))
  # The process holds the Python runtime, JAX and the model (well over 50 MB), and its peak
  # includes the call's own peak.
  assert memory["process_peak_mb"] > 50
  assert 0 <= memory["call_peak_mb"] <= memory["process_peak_mb"]

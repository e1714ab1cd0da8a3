"""Smoke test of experiments/benchmark_chunking.py at tiny shapes: it runs, prints and writes its
figures (the PyTorch comparison only if h-net-dynamic-chunking is installed)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HAS_HNET = importlib.util.find_spec("h_net_dynamic_chunking") is not None


def test_benchmark_chunking_tiny(tmp_path):
  out = tmp_path / "bench.json"
  args = [sys.executable, "-m", "experiments.benchmark_chunking", "--batch=2", "--length=12",
          "--dim=8", "--repeats=2", "--reference_length=4", "--pallas=false",
          "--skill_batch=2", "--skill_length=8", "--skill_widths=8,8,8", "--skill_latent_dim=4",
          "--peak_size=128", f"--torch={HAS_HNET}", f"--out={out}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=180)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  text = proc.stdout
  for needle in ("matmul peak", "fused (jit) fwd+bwd", "reference (eager Python loops",
                 "skill model train step", "fused / floor =", "% of the matmul peak"):
    assert needle in text, (needle, text)
  results = json.loads(out.read_text())
  layer = results["layer"]
  assert layer["router_finds_constructed_boundaries"]
  assert layer["matmul_flops_fwd_bwd"] == 3 * 2 * 2 * 8 * 8 * (3 * 12 + layer["capacity"])
  assert layer["reference_once"]["loss_relative_difference_to_fused"] < 1e-4
  # The peak is the largest of its three positive measurements, and every ratio is the one its
  # definition gives from the stored timings (the printed figure is that ratio).
  peaks = results["matmul_peak_flops_per_second_measurements"]
  peak = results["matmul_peak_flops_per_second"]
  assert len(peaks) == 3 and min(peaks) > 0 and peak == max(peaks)
  assert 0 < layer["fused_seconds_min"] <= layer["fused_seconds_median"]
  floor = layer["matmul_flops_fwd_bwd"] / peak
  assert layer["matmul_floor_seconds"] == pytest.approx(floor, rel=1e-12)
  assert layer["fused_over_floor"] == pytest.approx(layer["fused_seconds_median"] / floor,
                                                    rel=1e-12)
  assert f"fused / floor = {layer['fused_over_floor']:.2f}" in text
  skill = results["skill_train_step"]
  assert skill["flops_per_step"] > 0 and 0 < skill["seconds_min"] <= skill["seconds_median"]
  assert skill["flops_per_second"] == pytest.approx(
      skill["flops_per_step"] / skill["seconds_median"], rel=1e-12)
  assert skill["fraction_of_matmul_peak"] == pytest.approx(skill["flops_per_second"] / peak,
                                                           rel=1e-12)
  assert f"{100 * skill['fraction_of_matmul_peak']:.1f}% of the matmul peak" in text
  if not HAS_HNET:
    pytest.skip("the PyTorch comparison needs h-net-dynamic-chunking (pip install -e .[test])")
  assert "h-net-dynamic-chunking / fused" in text
  assert 0 < layer["torch"]["seconds_min"] <= layer["torch"]["seconds_median"]
  assert layer["torch_over_fused"] == pytest.approx(
      layer["torch"]["seconds_median"] / layer["fused_seconds_median"], rel=1e-12)
  assert f"h-net-dynamic-chunking / fused = {layer['torch_over_fused']:.2f}x" in text

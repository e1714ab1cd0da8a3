"""experiments/device_check.py at its tiny CPU sizes (`--small`), and the FLOP-share arithmetic.

The script is run as a user runs it, in a subprocess, and its outputs are checked against what
they must satisfy whatever the machine's speed: every row present without an error, the Pallas
check passing within its stated tolerance, times positive and finite, each ratio the quotient of
its own two times, no peak share where the peak is unknown (CPU), and the JSON and the markdown
table saying the same. Nothing here has run on an accelerator.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from hilam_jax import benchmarking

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
HAS_TORCH_LAYER = importlib.util.find_spec("h_net_dynamic_chunking") is not None
HAS_TORCH_UNISKILL = all(importlib.util.find_spec(m) is not None
                         for m in ("torch", "transformers"))
COLUMNS = ("row", "impl", "dtype", "size", "device", "time", "pairs/s", "vs floor", "TFLOP/s",
           "peak share", "check", "note")


def _run(tmp_path, *flags):
  out = tmp_path / "check.json"
  proc = subprocess.run([sys.executable, "-m", "experiments.device_check", "--small",
                         f"--out={out}", *flags], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=400)
  return proc, out, tmp_path / "check.md"


def _markdown_rows(text):
  """The table's data lines as {column: cell}."""
  lines = [l for l in text.splitlines() if l.startswith("| ")]
  assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
  return [dict(zip(COLUMNS, (c.strip() for c in l[1:-1].split(" | ")))) for l in lines[1:]]


def _number(cell, suffix=""):
  assert cell.endswith(suffix), cell
  return float(cell.removesuffix(suffix))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  proc, out, md = _run(tmp_path_factory.mktemp("device_check"))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(out.read_text()), md.read_text(), proc.stdout


def test_every_row_is_present_and_ran(small_run):
  result, _, stdout = small_run
  rows = result["rows"]
  per_layer_size = [("layer", "matmul floor", "xla", "float32")] + [
      ("layer", "chunking layer fwd+bwd", impl, "float32") for impl in ("fused", "pallas",
                                                                         "torch")]
  expected = ([("pallas", "pallas vs fused", "pallas", "float32")] * 2 + per_layer_size * 2
              + [("skill", "skill train step", impl, dtype)
                 for impl in ("fused", "pallas") for dtype in ("float32", "bfloat16")]
              + [("uniskill", label, impl, dtype)
                 for label in ("UniSkill IDM", "Depth-Anything + IDM")
                 for impl, dtype in (("torch", "float32"), ("flax", "float32"),
                                     ("flax", "bfloat16"))]
              + [("policy", "BAKU train step", "flax", dtype)
                 for dtype in ("float32", "bfloat16")])
  assert [(r["group"], r["row"], r["impl"], r["dtype"]) for r in rows] == expected
  assert [r["size"] for r in rows[:2]] == ["B2 L16 D8", "B2 L64 D8"]
  assert not [r for r in rows if r["error"]], [r["error"] for r in rows if r["error"]]
  assert result["failed_checks"] == 0 and result["small"]
  for r in rows:  # where it ran, on every row
    assert (r["device_kind"], r["platform"]) == ("cpu", "cpu")
    assert (r["jax"], r["jaxlib"]) == (jax.__version__, result["environment"]["jaxlib"])
    assert r["device"] == ("torch cpu" if r["impl"] == "torch" else "cpu")
  for i in range(1, len(rows) + 1):  # progress, one line per row as it starts
    assert f"[{i}] {rows[i - 1]['row']} | {rows[i - 1]['impl']} |" in stdout


def test_pallas_agrees_with_fused_within_the_stated_tolerance(small_run):
  result, _, _ = small_run
  checks = [r for r in result["rows"] if r["group"] == "pallas"]
  assert result["tolerance"] == 1e-4
  for r in checks:
    assert r["check"] == "pass"
    # The tolerance is 1e-4 x max(1, max |fused|): at least 1e-4, and the diffs are below it.
    assert r["tolerance_values"] >= 1e-4 and r["tolerance_grads"] >= 1e-4
    assert 0 <= r["max_abs_diff_values"] <= r["tolerance_values"]
    assert 0 <= r["max_abs_diff_grads"] <= r["tolerance_grads"]
    # float32 rounding (an EMA loop against an associative scan), far below the tolerance.
    assert r["max_abs_diff_values"] < 1e-5 and r["max_abs_diff_grads"] < 1e-4


def test_times_are_positive_and_ratios_and_rates_are_their_quotients(small_run):
  result, _, _ = small_run
  rows = result["rows"]
  timed = [r for r in rows if r["group"] != "pallas"]
  for r in timed:
    if r["impl"] == "torch" and "not installed" in r["note"]:
      continue
    assert 0 < r["seconds"] < math.inf and 0 < r["first_call_seconds"] < math.inf, r
  for size in ("B2 L16 D8", "B2 L64 D8"):
    layer = [r for r in rows if r["group"] == "layer" and r["size"] == size]
    floor = layer[0]
    assert floor["row"] == "matmul floor" and floor["ratio_to_floor"] == 1.0
    for r in layer:
      if "seconds" not in r:
        assert r["impl"] == "torch" and not HAS_TORCH_LAYER
        continue
      assert r["floor_seconds"] == floor["seconds"]
      assert r["ratio_to_floor"] == pytest.approx(r["seconds"] / floor["seconds"], rel=1e-12)
      # FLOP/s count the layer's matmul FLOPs: 3 x 2BD^2(3L + C), C = ceil(L / 3 * 1.5).
      length = int(size.split()[1][1:])
      assert r["flops_per_call"] == 3 * 2 * 2 * 8 * 8 * (3 * length + math.ceil(length / 2))
  for r in rows:
    if r.get("flops_per_call") and r.get("seconds"):
      assert r["flops_per_second"] == pytest.approx(r["flops_per_call"] / r["seconds"],
                                                    rel=1e-12)
  for r in rows:
    if r["group"] in ("skill", "policy"):
      assert r["flops_per_call"] > 0  # XLA's cost analysis of the compiled step
  for r in rows:
    if r["group"] == "uniskill" and r.get("seconds"):
      batch = int(r["size"].split()[0][1:])
      assert r["pairs_per_second"] == pytest.approx(batch / r["seconds"], rel=1e-12)
  torch_uniskill = [r for r in rows if r["group"] == "uniskill" and r["impl"] == "torch"]
  assert all(("seconds" in r) == HAS_TORCH_UNISKILL for r in torch_uniskill)
  if HAS_TORCH_UNISKILL:  # the Flax rows name their error against the reference
    for r in rows:
      if r["group"] == "uniskill" and r["impl"] == "flax":
        assert float(r["note"].split()[-1]) < (1e-3 if r["dtype"] == "float32" else 5e-2)


def test_no_peak_share_on_the_cpu(small_run):
  result, text, _ = small_run
  assert result["environment"]["peak"] == "unknown"
  assert "peak table entry: unknown" in text
  for r in result["rows"]:
    assert r.get("peak_share") is None and r.get("peak_flops_per_second") is None
  assert all(row["peak share"] == "" for row in _markdown_rows(text))


def test_json_and_markdown_agree(small_run):
  result, text, stdout = small_run
  assert text.strip() in stdout  # the printed table is the written one
  cells = _markdown_rows(text)
  assert len(cells) == len(result["rows"])
  for r, c in zip(result["rows"], cells):
    for column in ("row", "impl", "dtype", "size", "device"):
      assert c[column] == r[column]
    if r.get("seconds") is None:
      assert c["time"] == ""
    else:
      assert _number(c["time"], " ms") == pytest.approx(1e3 * r["seconds"], rel=1e-3)
    if r.get("pairs_per_second") is not None:
      assert _number(c["pairs/s"]) == pytest.approx(r["pairs_per_second"], rel=1e-3)
    else:
      assert c["pairs/s"] == ""
    if r.get("ratio_to_floor") is not None:
      assert _number(c["vs floor"], "x") == pytest.approx(r["ratio_to_floor"], abs=0.0051)
    else:
      assert c["vs floor"] == ""
    if r.get("flops_per_second") is not None:
      assert _number(c["TFLOP/s"]) == pytest.approx(1e-12 * r["flops_per_second"], rel=1e-3)
    else:
      assert c["TFLOP/s"] == ""
    if r.get("check"):
      verdict, figures = c["check"].split(": ")
      diffs, tolerances = figures.split(" <= ")
      assert verdict == r["check"]
      assert [float(v) for v in diffs.split(" / ")] == pytest.approx(
          [r["max_abs_diff_values"], r["max_abs_diff_grads"]], rel=0.06)
      assert [float(v) for v in tolerances.split(" / ")] == pytest.approx(
          [r["tolerance_values"], r["tolerance_grads"]], rel=0.06)
    else:
      assert c["check"] == ""
    assert c["note"] == r["note"]


def test_a_failed_check_exits_non_zero_and_still_writes_the_table(tmp_path):
  """A tolerance no float32 result meets: both checks fail, the exit status says so."""
  proc, out, md = _run(tmp_path, "--groups=pallas", "--tolerance=1e-12")
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "2 correctness check(s) FAILED" in proc.stdout
  result = json.loads(out.read_text())
  assert [r["check"] for r in result["rows"]] == ["FAIL", "FAIL"]
  assert result["failed_checks"] == 2 and md.read_text().count("| FAIL: ") == 2


def test_a_row_that_raises_keeps_its_error_and_the_run_goes_on():
  """`Table.measure` in a fresh interpreter (the script's flags stay out of this process)."""
  code = """
from experiments import device_check
table = device_check.Table({"device_kind": "cpu", "platform": "cpu", "jax": "j",
                            "jaxlib": "l", "peak": "unknown"}, 1, 1e-4)
def broken():
  raise RuntimeError("Triton lowering failed | at line 3")
table.measure(broken, group="layer", row="r", impl="pallas")
table.measure(lambda: {"seconds": 0.5}, group="layer", row="s", impl="fused")
print(repr(table.rows[0]["error"]), table.rows[1]["seconds"], table.failed_checks())
print(device_check.markdown_row(table.rows[0]))
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  first, line = proc.stdout.strip().splitlines()[-2:]
  assert first == "'RuntimeError: Triton lowering failed | at line 3' 0.5 []"
  # The markdown cell keeps the text without breaking the table.
  assert line.endswith("| ERROR RuntimeError: Triton lowering failed / at line 3 |")


@pytest.mark.parametrize("kind,name", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "unknown"), ("NVIDIA A100-SXM4-40GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "unknown"),
    ("Tesla T4", "T4"), ("TPU v4", "TPU v4"), ("TPU v4 lite", "unknown"),
    ("TPU v5 lite", "TPU v5e"), ("TPU v5e", "TPU v5e"), ("TPU v5", "TPU v5p"),
    ("TPU v5p", "TPU v5p"), ("TPU v6 lite", "TPU v6e"), ("cpu", "unknown"),
    ("Intel(R) Xeon(R) CPU", "unknown")])
def test_peak_table_lookup(kind, name):
  assert benchmarking.peak_name(kind) == name
  for dtype in ("float32", "bfloat16"):
    assert benchmarking.peak_flops(kind, dtype) == benchmarking.PEAKS.get(name, {}).get(dtype)


def test_peak_figures_and_flop_share_arithmetic():
  peak = benchmarking.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16")
  assert peak == 312e12 and benchmarking.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 156e12
  assert benchmarking.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert benchmarking.peak_flops("Tesla T4", "bfloat16") is None  # no bfloat16 units
  assert benchmarking.peak_flops("cpu", "float32") is None
  # 31.2 TFLOP in 0.5 s = 62.4 TFLOP/s = 20% of 312 TFLOP/s.
  assert benchmarking.peak_share(31.2e12, 0.5, peak) == pytest.approx(0.2, rel=1e-12)
  assert benchmarking.peak_share(1e12, 0.1, None) is None
  for name, peaks in benchmarking.PEAKS.items():  # every known chip has a float32 peak
    assert peaks["float32"] > 1e12, name

"""Benchmark: labeling throughput of UniSkill's IDM (with and without Depth-Anything) in Flax vs
the PyTorch reference, same inputs, same machine, same run. Not a test.

  python -m experiments.benchmark_uniskill --batch_sizes=1,8,32 --repeats=5
  python -m experiments.benchmark_uniskill --small --repeats=1      # seconds: the smoke size

Models, full size (`--small`: the tiny test configs), random weights, built and converted as the
released files would be:
  * IDM: `experiments/uniskill_torch_reference.ReferenceIDM` (20,053,248 parameters), saved as a
    plain state_dict `idm.pth`, converted with `uniskill_convert.convert_idm`;
  * depth: transformers' `DepthAnythingForDepthEstimation` from Depth-Anything-V2-Small's config,
    `save_pretrained` (config.json + model.safetensors), converted with
    `depth_anything_convert.convert`.
Rows per batch size B (pairs of frames, 2 frames per pair):
  idm         the IDM alone on given RGB [B, 2, 224, 224, 3] in [0, 1] + depth [B, 2, 224, 224]:
              torch float32 under `torch.inference_mode` vs our jitted `idm_skill` in float32
              and with bfloat16 compute;
  depth+idm   RGB only: torch = UniSkill's pipeline (DPT image processor, PIL backend,
              do_rescale=False -> transformers model -> per-image min-max -> bilinear 224 ->
              reference IDM) vs ours (`depth_anything.uniskill_depth` -> `idm_skill`, one jit;
              the depth model has no bfloat16 option, so the "bf16" row is float32 depth +
              bfloat16 IDM).
Timing: every side is warmed up (compiled) first, then the sides run in turn (torch, flax f32,
flax bf16, torch, ...) `repeats` times; the figure is the median, pairs/s = B / median seconds,
ratio = flax pairs/s / torch pairs/s. torch uses `torch.set_num_threads(--threads)` (default: the
cores this process may use); XLA's CPU client uses the same cores. Agreement: max |flax - torch| /
max |torch| of the skill latents on the timed inputs (the depth rows differ also by PIL's
fixed-point resize vs ours, one uint8 level in ~5e-5 of the values).
Memory (`--memory`): for each (row, side, B) a fresh subprocess loads that side's weights and
inputs, makes one warm-up call (compiles), then resets the peak-RSS counter (Linux
/proc/self/clear_refs) and makes one more call: "call peak" = VmHWM - VmRSS before the call (the
activations and workspace one call needs), "process peak" = VmHWM (weights, runtimes, compiled
code included). Compilation reuses the main run's persistent XLA cache.
Writes the figures, the configs and the package versions to --out_json.
"""
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from experiments.uniskill_sides import build_weights
from experiments.uniskill_sides import configs as _configs
from experiments.uniskill_sides import make_inputs
from experiments.uniskill_sides import make_side
from experiments.uniskill_sides import relative_error
from experiments.uniskill_sides import use_compilation_cache

_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Pairs per call.")
_DEPTH_BATCHES = flags.DEFINE_list("depth_batch_sizes", None,
                                   "Pairs per call of the depth+idm rows (default: batch_sizes).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed, interleaved calls per side and batch size.")
_WITH_DEPTH = flags.DEFINE_enum("with_depth", "both", ["both", "only", "none"],
                                "both: idm and depth+idm rows; only: depth+idm; none: idm.")
_BF16 = flags.DEFINE_bool("bfloat16", True, "Also time the IDM's bfloat16 compute option.")
_MEMORY = flags.DEFINE_bool("memory", True, "Measure peak RSS per (row, side, batch size).")
_THREADS = flags.DEFINE_integer("threads", None, "torch threads (default: usable cores).")
_OMP_PASSIVE = flags.DEFINE_bool(
    "omp_passive", True, "Set OMP_WAIT_POLICY=PASSIVE for torch (unless already set): on a "
    "machine shared with other jobs, torch's spinning OpenMP workers made each call seconds "
    "slower (full IDM, B=1, 2 threads: 3.3 s active vs 0.16 s passive).")
_SMALL = flags.DEFINE_bool("small", False, "Tiny models (the test configs): a smoke run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the weights go (default: a temp dir).")
_OUT = flags.DEFINE_string("out_json", "runs/benchmark_uniskill.json", "Figures out.")
_PROBE = flags.DEFINE_string("memory_probe", None, "Internal: row:side:batch, in --workdir.")

ROWS = {"both": ("idm", "depth+idm"), "only": ("depth+idm",), "none": ("idm",)}


def _status_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise KeyError(field)


def memory_probe(spec: str, workdir: str, small: bool, threads: int) -> dict:
  """One (row, side, batch) in this fresh process: warm-up call, reset the peak, one call."""
  row, side, batch = spec.split(":")
  if side != "torch":
    use_compilation_cache(workdir)
  prepare, call = make_side(side, workdir, small, row, threads)
  args = prepare(*make_inputs(_configs(small)[0], int(batch), seed=int(batch)))
  call(args)
  gc.collect()
  before = _status_kb("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
  call(args)
  peak = _status_kb("VmHWM")
  return {"call_peak_mb": (peak - before) / 1024, "process_peak_mb": peak / 1024}


def run_memory_probe(spec: str, workdir: str, threads: int) -> dict:
  args = [sys.executable, "-m", "experiments.benchmark_uniskill", f"--memory_probe={spec}",
          f"--workdir={workdir}", f"--small={_SMALL.value}", f"--threads={threads}"]
  proc = subprocess.run(args, capture_output=True, text=True, check=False,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines = [l for l in proc.stdout.splitlines() if l.startswith("MEMORY ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"memory probe {spec} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("MEMORY "):])


def time_row(row: str, batches: list[int], sides: list[str], workdir: str, threads: int) -> list:
  """Interleaved timing of `sides` on one row at each batch size: a list of result dicts."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  runners = {s: make_side(s, workdir, _SMALL.value, row, threads) for s in sides}
  results = []
  for batch in batches:
    rgb, depth = make_inputs(_configs(_SMALL.value)[0], batch, seed=batch)
    args = {s: prepare(rgb, depth) for s, (prepare, _) in runners.items()}
    outputs, warmup = {}, {}
    for s, (_, call) in runners.items():
      start = time.perf_counter()
      outputs[s] = call(args[s])
      warmup[s] = time.perf_counter() - start
    times = {s: [] for s in sides}
    for _ in range(_REPEATS.value):
      for s, (_, call) in runners.items():
        start = time.perf_counter()
        call(args[s])
        times[s].append(time.perf_counter() - start)
    result = {"row": row, "batch_size": batch, "sides": {}}
    for s in sides:
      seconds = float(np.median(times[s]))
      result["sides"][s] = {
          "seconds_median": seconds, "seconds_all": times[s], "first_call_seconds": warmup[s],
          "pairs_per_second": batch / seconds,
          "finite": bool(np.isfinite(outputs[s]).all())}
      if s != "torch":
        result["sides"][s]["ratio_to_torch"] = (batch / seconds) / result["sides"]["torch"][
            "pairs_per_second"]
        result["sides"][s]["max_relative_error_vs_torch"] = relative_error(outputs[s],
                                                                           outputs["torch"])
    if _MEMORY.value:
      for s in sides:
        result["sides"][s]["memory"] = run_memory_probe(f"{row}:{s}:{batch}", workdir, threads)
    results.append(result)
    print(_table_lines([result], header=False), flush=True)
  return results


def _table_lines(results: list, header: bool = True) -> str:
  lines = []
  if header:
    lines += ["| row | B | side | pairs/s | ratio vs torch | max rel. err | call peak RSS "
              "| process peak RSS |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    for s, v in r["sides"].items():
      mem = v.get("memory", {})
      lines.append(
          f"| {r['row']} | {r['batch_size']} | {s} | {v['pairs_per_second']:.2f} | "
          f"{v.get('ratio_to_torch', 1.0):.2f}x | {v.get('max_relative_error_vs_torch', 0.0):.1e} | "
          f"{mem.get('call_peak_mb', float('nan')):.0f} MB | "
          f"{mem.get('process_peak_mb', float('nan')):.0f} MB |")
  return "\n".join(lines)


def main(argv):
  del argv
  threads = _THREADS.value or len(os.sched_getaffinity(0))
  if _OMP_PASSIVE.value:  # before torch is imported; inherited by the memory probes
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="benchmark_uniskill_")
  if _PROBE.value:
    print("MEMORY " + json.dumps(memory_probe(_PROBE.value, workdir, _SMALL.value, threads)))
    return
  from data_pipeline import run_info  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_library_logs()
  use_compilation_cache(workdir)
  start = time.perf_counter()
  build_weights(workdir, _SMALL.value)
  print(f"weights built and converted in {time.perf_counter() - start:.0f} s ({workdir})")
  sides = ["torch", "flax_f32"] + (["flax_bf16"] if _BF16.value else [])
  batches = {"idm": [int(b) for b in _BATCHES.value],
             "depth+idm": [int(b) for b in (_DEPTH_BATCHES.value or _BATCHES.value)]}
  results = []
  print(_table_lines([]), flush=True)
  for row in ROWS[_WITH_DEPTH.value]:
    results += time_row(row, batches[row], sides, workdir, threads)
  idm_config, depth_config = _configs(_SMALL.value)
  out = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
         "flags": {"batch_sizes": batches, "repeats": _REPEATS.value,
                   "with_depth": _WITH_DEPTH.value, "small": _SMALL.value, "threads": threads,
                   "memory": _MEMORY.value,
                   "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
         "idm_config": idm_config.to_dict(), "depth_config": depth_config.to_dict(),
         "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
         "results": results, "versions": run_info.package_versions(
             run_info.PACKAGES + ("transformers", "safetensors", "pillow"))}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  run_info.write_json_atomic(_OUT.value, out)
  print(f"written {_OUT.value}")


if __name__ == "__main__":
  app.run(main)

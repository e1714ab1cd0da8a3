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

SEED = 0
ROWS = {"both": ("idm", "depth+idm"), "only": ("depth+idm",), "none": ("idm",)}


def _configs(small: bool):
  from hilam_jax.lam.uniskill.depth_anything import DepthConfig  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill.idm import IDMConfig  # pylint: disable=g-import-not-at-top
  return (IDMConfig.tiny(), DepthConfig.tiny()) if small else (IDMConfig(), DepthConfig())


def _randomize_depth_(model, seed: int):
  """Random weights at a scale that keeps activations O(1) through the 12 blocks and the
  bias-free conv stacks (weights ~ N(0, 1/fan_in), norm and layer scales ~ 1), and a positive
  bias on the last conv so the ReLU output is not all zero (min-max of a constant is NaN)."""
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if p.ndim > 1:
        p.copy_(noise / max(p[0].numel(), 1) ** 0.5)
      elif "lambda1" in name or ("norm" in name and name.endswith("weight")):
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_(0.1 * noise)
    model.head.conv3.bias.fill_(0.5)
  return model.eval()


def build_weights(workdir: str, small: bool) -> None:
  """Random reference weights saved as released (idm.pth, a save_pretrained depth folder) and
  converted with our converters into workdir/converted/{idm,depth}."""
  import transformers  # pylint: disable=g-import-not-at-top
  from experiments import uniskill_torch_reference as reference  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import convert as uniskill_convert  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import depth_anything_convert  # pylint: disable=g-import-not-at-top
  idm_config, _ = _configs(small)
  reference.save_state_dict(reference.make_reference(idm_config, SEED),
                            os.path.join(workdir, "idm.pth"))
  uniskill_convert.convert_idm(os.path.join(workdir, "idm.pth"),
                               os.path.join(workdir, "converted", "idm"), idm_config)
  depth = transformers.DepthAnythingForDepthEstimation(
      reference.depth_anything_hf_config(tiny=small))
  _randomize_depth_(depth, SEED).save_pretrained(os.path.join(workdir, "depth_hf"))
  depth_anything_convert.convert(os.path.join(workdir, "depth_hf"),
                                 os.path.join(workdir, "converted", "depth"))


def make_inputs(config, batch: int, seed: int):
  """RGB [B, T, H, W, 3] in [0, 1] and depth [B, T, H, W] on an arbitrary scale, float32."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  frames = (batch, config.num_frames, config.image_size, config.image_size)
  return (rng.uniform(size=(*frames, 3)).astype(np.float32),
          rng.uniform(0.3, 4.0, size=frames).astype(np.float32))


def torch_side(workdir: str, small: bool, row: str, threads: int):
  """(prepare(rgb, depth) -> args, call(args) -> skill numpy [B, Z]) of the PyTorch reference."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  from experiments import uniskill_torch_reference as reference  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  idm_config, _ = _configs(small)
  idm = reference.ReferenceIDM(idm_config)
  idm.load_state_dict(torch.load(os.path.join(workdir, "idm.pth"), weights_only=True,
                                 map_location="cpu"), strict=True)
  idm.eval()
  size = idm_config.image_size
  if row == "idm":
    def prepare(rgb, depth):
      return (torch.from_numpy(depth), torch.from_numpy(rgb).permute(0, 1, 4, 2, 3).contiguous())

    def call(args):
      with torch.inference_mode():
        return idm(*args, return_skill=True)[:, 0].numpy()
    return prepare, call

  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import depth_anything  # pylint: disable=g-import-not-at-top
  depth_model = transformers.DepthAnythingForDepthEstimation.from_pretrained(
      os.path.join(workdir, "depth_hf")).eval()
  processor = DPTImageProcessorPil(  # UniSkill's training-time settings (UNISKILL.md)
      do_resize=True, size={"height": depth_anything.DPT_SIZE, "width": depth_anything.DPT_SIZE},
      keep_aspect_ratio=True, ensure_multiple_of=14, do_rescale=False, do_normalize=True,
      image_mean=list(depth_anything.IMAGENET_MEAN), image_std=list(depth_anything.IMAGENET_STD),
      do_pad=False)

  def prepare(rgb, depth):
    del depth
    return list(rgb.reshape(-1, *rgb.shape[2:])), rgb.shape[0]

  def call(args):
    images, b = args
    with torch.inference_mode():
      pixels = processor(images=images, return_tensors="pt",
                         input_data_format="channels_last")["pixel_values"]
      depth = depth_model(pixel_values=pixels).predicted_depth  # [2B, H', W']
      low = depth.amin(dim=(1, 2), keepdim=True)
      depth = (depth - low) / (depth.amax(dim=(1, 2), keepdim=True) - low)
      depth = F.interpolate(depth[:, None], size=(size, size), mode="bilinear",
                            align_corners=False).reshape(b, -1, size, size)
      rgb = torch.from_numpy(np.stack(images)).reshape(b, -1, size, size, 3)
      return idm(depth, rgb.permute(0, 1, 4, 2, 3), return_skill=True)[:, 0].numpy()
  return prepare, call


def flax_side(workdir: str, row: str, dtype_name: str):
  """As `torch_side` for our jitted Flax path in float32 or bfloat16 compute."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import convert as uniskill_convert  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import depth_anything  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import depth_anything_convert  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import idm as uniskill_idm  # pylint: disable=g-import-not-at-top
  dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}[dtype_name]
  idm_config, variables = uniskill_convert.load_idm(os.path.join(workdir, "converted", "idm"))
  params = {"idm": jax.device_put(variables)}
  size = idm_config.image_size
  if row == "idm":
    skill = functools.partial(uniskill_idm.idm_skill, config=idm_config, dtype=dtype)
    prepare = lambda rgb, depth: (jnp.asarray(rgb), jnp.asarray(depth))
    return prepare, lambda args: np.asarray(skill(params["idm"], *args).block_until_ready())

  depth_config, params["depth"] = depth_anything_convert.load(
      os.path.join(workdir, "converted", "depth"))
  params = jax.device_put(params)

  @jax.jit
  def encode(params, rgb):  # [B, T, S, S, 3] in [0, 1], as UniSkillDynamics.encode after /255
    b, t = rgb.shape[:2]
    depth = depth_anything.uniskill_depth(params["depth"], rgb.reshape(b * t, size, size, 3),
                                          config=depth_config, out_size=size)
    return uniskill_idm.idm_skill(params["idm"], rgb, depth.reshape(b, t, size, size),
                                  config=idm_config, dtype=dtype)
  return (lambda rgb, depth: jnp.asarray(rgb),
          lambda rgb: np.asarray(encode(params, rgb).block_until_ready()))


def make_side(name: str, workdir: str, small: bool, row: str, threads: int):
  if name == "torch":
    return torch_side(workdir, small, row, threads)
  return flax_side(workdir, row, name.split("_")[1])


def use_compilation_cache(workdir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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


def relative_error(actual, expected) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


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

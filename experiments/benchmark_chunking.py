"""Benchmark: one H-Net dynamic-chunking layer (fwd + bwd) and the skill model's train-step FLOP/s.

Not a test: it prints measured figures, all from one run on this machine (CPU), and writes them as
JSON.

  pip install -e .[bench]          # adds h-net-dynamic-chunking (PyTorch, CPU torch 2.13.0 kept)
  python -m experiments.benchmark_chunking --out=runs/benchmark_chunking.json

1. One dynamic-chunking layer, forward + backward (gradients w.r.t. all parameters and the input),
   at --batch x --length x --dim (default 16 x 256 x 256):
     routing (q/k projections, cosine of neighbours) -> chunk (keep the boundary vectors, capacity
     C = ceil(L / N * capacity_factor)) -> main-network stand-in (Dense D -> D on the chunks) ->
     dechunk (EMA, upsample, STE) -> + residual projection (Dense D -> D of the input);
     loss = <y, fixed cotangent> + 0.03 * ratio loss.
   Implementations:
     * "fused"  (jitted; the default impl), warm, median of --repeats;
     * "reference" (eager Python loops over positions, differentiated by jax autodiff): timed ONCE
       on a slice (--reference_batch x --reference_length, default 1 x 32): at 0.2-0.5 s per
       position it would take tens of minutes at the full size; the linear extrapolation printed
       for the full size is an estimate, not a measurement;
     * "pallas" in interpret mode on CPU: timed once (compile + first call) and once warm.
       Interpret mode is an emulation, NOT a speed claim for the kernels;
     * `h-net-dynamic-chunking` (PyPI, lucidrains; PyTorch): its `DynamicSequenceChunker` with
       `handle_residual_proj=True` (its residual Linear) and a torch Linear D -> D as the main
       network on its downsampled tokens, warm, median of --repeats; skipped if not installed.
   Inputs are built so that every implementation sees the same boundaries: piecewise-constant
   segments (about L / N per sequence, exactly round(L / N) boundaries, no capacity overflow) whose
   consecutive segment vectors have cosine about -0.7 (p about 0.85 at boundaries, about 0
   inside), and both routers' q/k projections are the identity (ours is identity-initialised; the
   PyTorch one is set to it). The PyTorch layer pads to the batch's largest chunk count (= L / N
   here), ours runs its main network on the static capacity C (1.5 x more rows at the defaults).
   Fused and PyTorch repeats are interleaved round-robin so that load from other processes hits
   both alike.
   Matmul-FLOP floor of the layer: 3 x forward matmul FLOPs (q and k projections 2 x 2BLD^2, main
   network 2BCD^2, residual 2BLD^2) / the measured matmul peak.

2. Skill model train step: value_and_grad of `losses.skill_loss` (lambda_rec = 0, lambda_ratio =
   0.03) + an optax Adam update, jitted, on `SkillModelConfig()` defaults (flags --skill_*) at
   --skill_batch x --skill_length; XLA cost analysis (flops per step) / median step time, as a
   fraction of the matmul peak.

Matmul peak: a jitted float32 2048 x 2048 matmul, best of 20 runs, measured three times in the
same run (start, after the layer, end); the ratios use the largest, so they are conservative. On a
machine shared with other jobs the peak itself moves (94-212 GFLOP/s seen on the same 2 cores
within minutes), and so do the ratios: compare figures from one run only.

Measured 2026-11-24 (2 CPU cores shared with other jobs, load average about 2; jax 0.10.2,
torch 2.13.0+cpu, h-net-dynamic-chunking 0.5.19), default flags:
  matmul peak 189 / 198 / 205 GFLOP/s (start / middle / end) -> 204.9 GFLOP/s used
  layer B=16 L=256 D=256 C=128: 5.64 GFLOP of matmuls fwd+bwd -> floor 27.5 ms
    fused (jit)          66.9 ms median (61.4 best)  = 2.43x the floor (target <= 1.5: NOT met)
    its matmuls alone    45.1 ms median              = 1.64x the floor; fused = 1.48x this
    h-net-dynamic-chunking 64.5 ms median (53.8 best) = 0.96x fused (target >= 2x: NOT met)
    pallas (interpret)   1.8 s compile + first call, 105 ms warm (emulation, not a speed claim)
    reference            5.7 s once at B=1, L=32 (~12 min extrapolated to full size)
  skill train step (defaults, batch 16, L=128): 4.37 GFLOP, 105.7 ms -> 41.4 GFLOP/s = 20.2% of
    the peak (target >= 50%: NOT met)
An earlier run under heavier load (load average about 7) gave fused 140 ms vs PyTorch 740 ms
median (171 ms best): the PyTorch layer suffers more from contention, so ratios taken on a busy
machine flatter ours.
"""
import json
import math
import os
import statistics
import time

from absl import app
from absl import flags

from experiments.chunking_layer import RATIO_LOSS_WEIGHT
from experiments.chunking_layer import chunk_capacity
from experiments.chunking_layer import chunking_routing
from experiments.chunking_layer import make_jax_layer
from experiments.chunking_layer import make_torch_layer
from experiments.chunking_layer import matmul_flops_fwd
from experiments.chunking_layer import matmuls_only
from experiments.chunking_layer import segment_inputs
from hilam_jax import benchmarking
from hilam_jax.benchmarking import timed

_BATCH = flags.DEFINE_integer("batch", 16, "B of the chunking layer.")
_LENGTH = flags.DEFINE_integer("length", 256, "L of the chunking layer.")
_DIM = flags.DEFINE_integer("dim", 256, "D of the chunking layer.")
_RATIO = flags.DEFINE_float("target_ratio", 3.0, "N: mean segment length of the inputs.")
_CAPACITY_FACTOR = flags.DEFINE_float("capacity_factor", 1.5, "C = ceil(L / N * factor).")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed repeats (median) of warm measurements.")
_REFERENCE = flags.DEFINE_bool("reference", True, "Time the eager reference once.")
_REF_BATCH = flags.DEFINE_integer("reference_batch", 1, "B of the one reference timing.")
_REF_LENGTH = flags.DEFINE_integer("reference_length", 32, "L of the one reference timing.")
_PALLAS = flags.DEFINE_bool("pallas", True, "Time the Pallas kernels (interpret mode on CPU).")
_TORCH = flags.DEFINE_bool("torch", True, "Time h-net-dynamic-chunking if installed.")
_SKILL = flags.DEFINE_bool("skill", True, "Measure the skill-model train step.")
_SKILL_BATCH = flags.DEFINE_integer("skill_batch", 16, "Batch of the skill-model train step.")
_SKILL_LENGTH = flags.DEFINE_integer("skill_length", 128, "Window L of the skill-model step.")
_SKILL_WIDTHS = flags.DEFINE_list("skill_widths", None, "Override SkillModelConfig.widths.")
_SKILL_LATENT = flags.DEFINE_integer("skill_latent_dim", None, "Override latent_dim.")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "Matrix size of the matmul peak.")
_OUT = flags.DEFINE_string("out", "runs/benchmark_chunking.json", "Where to write the figures.")

def bench_jax_layer(results, x_np, starts, cot_np):
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  batch, length, dim = x_np.shape
  ratio = _RATIO.value
  capacity = chunk_capacity(length, ratio, _CAPACITY_FACTOR.value)
  init, loss = make_jax_layer(dim, capacity, ratio)
  x, cot = jnp.asarray(x_np), jnp.asarray(cot_np)
  mask = jnp.ones((batch, length), bool)
  params = init(jax.random.key(0), x, mask)

  grad = jax.value_and_grad(loss, argnums=(0, 1))
  fused = jax.jit(lambda p, x_, c_: grad(p, x_, mask, c_, "fused"))
  value, grads = fused(params, x, cot)
  jax.block_until_ready(grads)
  # The router must find exactly the constructed boundaries (no overflow, same as PyTorch).
  routing = jax.jit(lambda p, x_: chunking_routing(p, x_, mask, dim))(params, x)
  found = np.asarray(routing.boundary_mask)
  results["layer"] = {
      "batch": batch, "length": length, "dim": dim, "capacity": capacity,
      "boundaries_per_sequence": int(starts.sum(1).max()),
      "router_finds_constructed_boundaries": bool((found == starts).all()),
  }
  # Matmul FLOPs, forward: q, k, residual on B L rows, main network on B C rows; x3 for fwd+bwd.
  fwd_matmul = matmul_flops_fwd(batch, length, dim, capacity)
  flops = benchmarking.compiled_flops(fused.lower(params, x, cot).compile())
  results["layer"].update({"matmul_flops_fwd": fwd_matmul, "matmul_flops_fwd_bwd": 3 * fwd_matmul,
                           "xla_cost_analysis_flops_fwd_bwd": flops})

  def run_fused():
    jax.block_until_ready(fused(params, x, cot))
  for _ in range(3):
    run_fused()
  return params, x, mask, cot, loss, capacity, value, grads, run_fused


def bench_layer(results):
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  batch, length, dim = _BATCH.value, _LENGTH.value, _DIM.value
  x_np, starts = segment_inputs(batch, length, dim, _RATIO.value)
  cot_np = np.random.default_rng(1).normal(size=x_np.shape).astype(np.float32) / math.sqrt(dim)
  params, x, mask, cot, loss, capacity, value, grads, run_fused = bench_jax_layer(
      results, x_np, starts, cot_np)
  layer = results["layer"]
  print(f"chunking layer B={batch} L={length} D={dim} C={capacity} "
        f"({layer['boundaries_per_sequence']} boundaries/sequence; router finds them: "
        f"{layer['router_finds_constructed_boundaries']})")

  run_torch, torch_info = (make_torch_layer(x_np, cot_np, _RATIO.value) if _TORCH.value
                           else (None, {}))
  if run_torch is not None:
    for _ in range(3):
      run_torch()
  # Interleaved repeats: fused, torch, fused, torch, ...
  run_matmuls = matmuls_only(params, x, cot, capacity)
  fused_times, torch_times, matmul_times = [], [], []
  for _ in range(_REPEATS.value):
    fused_times.append(timed(run_fused, 1)[0])
    matmul_times.append(timed(run_matmuls, 1)[0])
    if run_torch is not None:
      torch_times.append(timed(run_torch, 1)[0])
  fused_s = statistics.median(fused_times)
  layer.update({"fused_seconds_median": fused_s, "fused_seconds_min": min(fused_times)})
  print(f"  fused (jit) fwd+bwd: median {1e3 * fused_s:.2f} ms (min {1e3 * min(fused_times):.2f}"
        f" ms) over {len(fused_times)} repeats")
  print(f"  matmul FLOPs fwd+bwd {layer['matmul_flops_fwd_bwd'] / 1e9:.3f} GFLOP (XLA cost "
        f"analysis of the whole step {layer['xla_cost_analysis_flops_fwd_bwd'] / 1e9:.3f} GFLOP)")
  matmul_s = statistics.median(matmul_times)
  layer.update({"matmuls_only_seconds_median": matmul_s, "matmuls_only_seconds_min":
                min(matmul_times)})
  print(f"  the layer's matmuls alone (same shapes, fwd+bwd, jit, no routing/chunk/dechunk): "
        f"median {1e3 * matmul_s:.2f} ms")
  if run_torch is not None:
    torch_s = statistics.median(torch_times)
    layer["torch"] = dict(torch_info, seconds_median=torch_s, seconds_min=min(torch_times))
    layer["torch_over_fused"] = torch_s / fused_s
    print(f"  h-net-dynamic-chunking {torch_info['version']} (torch {torch_info['torch']}, "
          f"{torch_info['torch_threads']} threads, downsampled to "
          f"{torch_info['downsampled_length']} tokens) fwd+bwd: median {1e3 * torch_s:.2f} ms "
          f"(min {1e3 * min(torch_times):.2f} ms)")

  if _PALLAS.value:
    grad = jax.value_and_grad(loss, argnums=(0, 1))
    pallas = jax.jit(lambda p, x_, c_: grad(p, x_, mask, c_, "pallas"))
    start = time.perf_counter()
    p_value, p_grads = pallas(params, x, cot)
    jax.block_until_ready(p_grads)
    first = time.perf_counter() - start
    warm, _ = timed(lambda: jax.block_until_ready(pallas(params, x, cot)), 1)
    agree = float(abs(p_value - value) / max(abs(float(value)), 1e-6))
    layer["pallas_interpret"] = {"first_call_seconds": first, "warm_call_seconds": warm,
                                 "loss_relative_difference_to_fused": agree}
    print(f"  pallas (INTERPRET MODE on CPU, not a speed claim) fwd+bwd: compile + first call "
          f"{first:.2f} s, one warm call {1e3 * warm:.1f} ms (loss rel. diff to fused {agree:.1e})")

  if _REFERENCE.value:
    # The eager reference costs about 0.2-0.5 s per position (fwd + bwd) on this machine, i.e. tens
    # of minutes at B=16, L=256: it is timed once on the first --reference_batch sequences'
    # first --reference_length positions, and linearly extrapolated (labelled as such).
    rb, rl = min(_REF_BATCH.value, batch), min(_REF_LENGTH.value, length)
    ref_capacity = chunk_capacity(rl, _RATIO.value, _CAPACITY_FACTOR.value)
    _, ref_loss = make_jax_layer(dim, ref_capacity, _RATIO.value)
    xr, cr, mr = x[:rb, :rl], cot[:rb, :rl], mask[:rb, :rl]
    boundary_mask = chunking_routing(params, xr, mr, dim).boundary_mask
    ref_grad = jax.value_and_grad(ref_loss, argnums=(0, 1))
    start = time.perf_counter()
    r_value, r_grads = ref_grad(params, xr, mr, cr, "reference", boundary_mask)
    jax.block_until_ready(r_grads)
    ref_s = time.perf_counter() - start
    f_value, _ = jax.jit(lambda p, x_, c_: ref_grad(p, x_, mr, c_, "fused"))(params, xr, cr)
    agree = float(abs(r_value - f_value) / max(abs(float(f_value)), 1e-6))
    extrapolated = ref_s * (batch * length) / (rb * rl)
    layer["reference_once"] = {"batch": rb, "length": rl, "seconds": ref_s,
                               "extrapolated_seconds_full_size": extrapolated,
                               "loss_relative_difference_to_fused": agree}
    print(f"  reference (eager Python loops, timed ONCE at B={rb}, L={rl}: too slow for the full "
          f"size) fwd+bwd: {ref_s:.1f} s; linear extrapolation to B={batch}, L={length}: "
          f"~{extrapolated:.0f} s (not measured) (loss rel. diff to fused {agree:.1e})")


def bench_skill(results):
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from hilam_jax.skill import losses
  from hilam_jax.skill import model as skill_model
  overrides = {}
  if _SKILL_WIDTHS.value:
    overrides["widths"] = tuple(int(w) for w in _SKILL_WIDTHS.value)
  if _SKILL_LATENT.value:
    overrides["latent_dim"] = _SKILL_LATENT.value
  config = skill_model.SkillModelConfig(**overrides)
  module = skill_model.SkillModel(config)
  batch, length = _SKILL_BATCH.value, _SKILL_LENGTH.value
  params = skill_model.init_params(config, jax.random.key(0), length)
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  data = {"latents": jnp.asarray(rng.normal(size=(batch, length, config.latent_dim)),
                                 jnp.float32),
          "mask": jnp.ones((batch, length), bool)}

  def step(params, opt_state, data, key):
    (loss, metrics), grads = jax.value_and_grad(losses.skill_loss, has_aux=True)(
        params, module, data, key, lambda_rec=0.0, lambda_ratio=RATIO_LOSS_WEIGHT)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  train_step = jax.jit(step)
  key = jax.random.key(1)
  compiled = train_step.lower(params, opt_state, data, key).compile()
  flops = benchmarking.compiled_flops(compiled)
  state = [params, opt_state]

  def run():
    state[0], state[1], loss, _ = compiled(state[0], state[1], data, key)
    jax.block_until_ready(loss)
  for _ in range(3):
    run()
  step_s, step_min = timed(run, _REPEATS.value)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  results["skill_train_step"] = {
      "config": config.to_dict(), "batch": batch, "length": length, "parameters": n_params,
      "capacities": list(config.capacities(length)), "flops_per_step": flops,
      "seconds_median": step_s, "seconds_min": step_min, "flops_per_second": flops / step_s}
  print(f"skill model train step (SkillModelConfig widths {config.widths}, {n_params} params, "
        f"batch {batch}, L={length}, capacities {config.capacities(length)}): "
        f"{flops / 1e9:.3f} GFLOP/step (XLA cost analysis), median {1e3 * step_s:.1f} ms "
        f"-> {flops / step_s / 1e9:.2f} GFLOP/s")


def summarize(results, peak):
  """Adds the peak-relative ratios to results and prints them against the targets."""
  layer = results["layer"]
  floor_s = layer["matmul_flops_fwd_bwd"] / peak
  fused_s = layer["fused_seconds_median"]
  layer["fused_min_over_floor"] = layer["fused_seconds_min"] / floor_s
  layer.update({"matmul_floor_seconds": floor_s, "fused_over_floor": fused_s / floor_s,
                "matmuls_only_over_floor": layer["matmuls_only_seconds_median"] / floor_s,
                "fused_over_matmuls_only": fused_s / layer["matmuls_only_seconds_median"]})
  print("summary:")
  print(f"  layer matmul-FLOP floor {1e3 * floor_s:.2f} ms at {peak / 1e9:.1f} GFLOP/s; "
        f"fused / floor = {fused_s / floor_s:.2f} (target <= 1.5: "
        f"{'met' if fused_s / floor_s <= 1.5 else 'NOT met'}; best run / floor = "
        f"{layer['fused_min_over_floor']:.2f}); the bare matmuls / floor = "
        f"{layer['matmuls_only_over_floor']:.2f}; fused / bare matmuls = "
        f"{layer['fused_over_matmuls_only']:.2f}")
  if "torch" in layer:
    ratio = layer["torch_over_fused"]
    ratio_min = layer["torch"]["seconds_min"] / layer["fused_seconds_min"]
    layer["torch_over_fused_min"] = ratio_min
    print(f"  h-net-dynamic-chunking / fused = {ratio:.2f}x on medians, {ratio_min:.2f}x on the "
          f"best runs (target >= 2: {'met' if ratio >= 2 else 'NOT met'} on medians, "
          f"{'met' if ratio_min >= 2 else 'NOT met'} on best runs)")
  if "skill_train_step" in results:
    skill = results["skill_train_step"]
    skill["fraction_of_matmul_peak"] = skill["flops_per_second"] / peak
    print(f"  skill train step {skill['flops_per_second'] / 1e9:.2f} GFLOP/s = "
          f"{100 * skill['fraction_of_matmul_peak']:.1f}% of the matmul peak (target >= 50%: "
          f"{'met' if skill['fraction_of_matmul_peak'] >= 0.5 else 'NOT met'})")


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  logs.quiet_library_logs()
  results = {}
  peak_start = benchmarking.matmul_peak_flops(_PEAK_SIZE.value, repeats=20)
  print(f"matmul peak (jit float32 {_PEAK_SIZE.value}^2, best of 20): {peak_start / 1e9:.1f} "
        "GFLOP/s")
  bench_layer(results)
  peak_middle = benchmarking.matmul_peak_flops(_PEAK_SIZE.value, repeats=20)
  print(f"matmul peak again after the layer: {peak_middle / 1e9:.1f} GFLOP/s")
  if _SKILL.value:
    bench_skill(results)
  peak_end = benchmarking.matmul_peak_flops(_PEAK_SIZE.value, repeats=20)
  peak = max(peak_start, peak_middle, peak_end)
  print(f"matmul peak again at the end: {peak_end / 1e9:.1f} GFLOP/s; the ratios use the largest "
        f"({peak / 1e9:.1f} GFLOP/s)")
  results.update({"matmul_peak_flops_per_second_measurements": [peak_start, peak_middle,
                                                                 peak_end],
                  "matmul_peak_flops_per_second": peak})
  summarize(results, peak)
  try:
    from data_pipeline import run_info
    results["versions"] = run_info.package_versions()
  except Exception:  # pylint: disable=broad-except
    pass
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(results, f, indent=1)
  print(f"written {_OUT.value}")


if __name__ == "__main__":
  app.run(main)

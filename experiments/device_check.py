"""Every accelerator figure of the project in one command, for the first minutes on a GPU or TPU.

  python -m experiments.device_check --out=runs/device_check.json   # <= 8 min on one chip (goal)
  python -m experiments.device_check --small                        # tiny sizes, CPU, <= 60 s

Prints ONE table, one row per figure (progress lines as each row runs), and with --out writes it
as <out>.json and <out>.md (the same stem). Every row records the device kind, the platform and
the jax / jaxlib versions. Inputs are seeded random numbers and the weights are random: the
figures are speeds and agreements, never quality. Measured on the first local device only (one
chip: the peaks are per chip). A row that raises (e.g. a Triton or Mosaic lowering error) keeps
the error text in its row and the script goes on; the exit status is 1 only if a correctness
check failed (an error in a check row is reported, not counted as a failure).

Rows (full size; --small in brackets):
  1. pallas vs fused: the Pallas chunk / dechunk kernels (`chunk_impl="pallas"`, compiled for the
     device: Triton on GPU, Mosaic on TPU, the interpreter on CPU) against the fused path on the
     same routing: chunk -> tanh -> dechunk, values and the gradients w.r.t. the input, the
     boundary probabilities and the confidences (vjp of a random cotangent). Passes when each
     max abs diff is <= --tolerance (1e-4) x max(1, max |fused|). At both layer sizes of row 2.
  2. chunking layer fwd+bwd (`chunking_layer.py`: routing, chunk, Dense main network, dechunk,
     residual; the ratio loss) at B 16, L 256 and 4,096, D 256 [B 2, L 16 and 64, D 8]: "fused",
     "pallas" and the PyTorch `h-net-dynamic-chunking` layer (on cuda when torch sees one,
     else "torch cpu"; "not installed" without it), and the matmul floor measured in the same
     run: fwd+bwd of the layer's matmuls alone (q, k, main, residual projections: the same
     FLOPs). "vs floor" = time / floor; FLOP/s count those matmul FLOPs.
  3. skill train step: `hilam_jax/skill` model + the trainer's loss, optimizer and jitted step
     (`make_train_step`) at the LIBERO setting (`experiments/configs/main.py:libero_long`:
     window 64, batch 32, bottleneck heads; latent width 64, UniSkill's; L_rec left out: it runs
     the frozen UniSkill FDM) [libero_smoke's tiny model], fused and pallas chunking.
     FLOP/s = XLA's cost analysis of the compiled step / its median time; peak share against
     `hilam_jax/benchmarking.py`'s PEAKS.
  4. UniSkill labeling, pairs/s: the full-size IDM alone (224 px, batch 32 [tiny, 2]) and
     Depth-Anything + IDM (RGB only, batch 8 [tiny, 1]), Flax (`hilam_jax/lam/uniskill`) vs the
     PyTorch reference (`uniskill_sides.py`, as `benchmark_uniskill.py` times it; on cuda when
     torch sees one). The torch rows need torch + transformers; without them the Flax rows run
     on Flax-initialised weights.
  5. BAKU train step at the LIBERO setting (two cameras 128x128, proprio, language, 10-step
     action chunks, on-device augmentation, batch 64 [libero_smoke's tiny policy]): time/step,
     FLOP/s, peak share.
  6. bfloat16 next to float32 wherever the code has the option: the trainers' `compute_dtype`
     (rows 3 and 5) and the IDM's compute dtype (row 4; Depth-Anything stays float32). Rows 1-2
     are float32 (the layer has no dtype option).

Peaks (PEAKS, per chip, dense): bfloat16 rows use the bfloat16 tensor-core / MXU peak; float32
rows on GPUs the TF32 tensor-core peak (jax's default matmul precision uses TF32 on GPUs that
have it; T4: plain FP32), on TPUs the bfloat16 MXU peak (TPUs run float32 matmuls at the default
precision as bfloat16 passes). Any other device kind (CPU included): "unknown", share blank.

On a GPU, jax allocates memory as it needs it (XLA_PYTHON_CLIENT_PREALLOCATE=false, unless set)
so that torch can run its rows on the same device.

--small: the same code at tiny sizes on CPU, 2 timed calls per row, XLA's CPU optimisations off
(SMALL_XLA_FLAGS: compilation is most of a tiny run's time): a smoke run, not a measurement.
"""
import functools
import math
import os
import tempfile
import time
import traceback

from absl import app
from absl import flags

from experiments import chunking_layer
from experiments import uniskill_sides
from hilam_jax import benchmarking

_SMALL = flags.DEFINE_bool("small", False, "Tiny sizes on CPU (Pallas interpreted): a smoke run.")
_OUT = flags.DEFINE_string("out", None, "Also write the table as <out stem>.json and .md.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed calls per row, median (default 10; "
                                "2 with --small).")
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4, "Pallas vs fused: pass when each max abs diff "
                                 "is <= tolerance x max(1, max |fused|).")
_GROUPS = flags.DEFINE_list("groups", None, "Row groups to run (default all): pallas, layer, "
                            "skill, uniskill, policy.")

GROUPS = ("pallas", "layer", "skill", "uniskill", "policy")
RATIO, CAPACITY_FACTOR = 3.0, 1.5   # the layer's N and capacity slack (as benchmark_chunking)
DTYPES = ("float32", "bfloat16")
# --small: XLA's CPU compilation is most of a tiny run; these flags cut the skill step's compile
# from about 7 s to 3 s on the 2-core machine (the code run is the same).
SMALL_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

# ----------------------------------------------------------------------------- the table

COLUMNS = ("row", "impl", "dtype", "size", "device", "time", "pairs/s", "vs floor", "TFLOP/s",
           "peak share", "check", "note")


def environment() -> dict:
  """What every row records about where it ran."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  device = jax.local_devices()[0]
  return {"device_kind": device.device_kind, "platform": device.platform,
          "jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", "?"),
          "peak": benchmarking.peak_name(device.device_kind)}


class Table:
  """The rows so far. `measure` adds one, printing progress, and keeps its error if it raises:
  on a new device any row may fail to lower or compile, and the others must still be measured."""

  def __init__(self, env: dict, repeats: int, tolerance: float):
    self.env, self.repeats, self.tolerance, self.rows = env, repeats, tolerance, []

  def measure(self, fn, *, group, row, impl, dtype="float32", size="", device=None, **extra):
    """Runs fn() -> dict of figures into a new row; returns the row."""
    entry = dict(self.env, group=group, row=row, impl=impl, dtype=dtype, size=size,
                 device=device or self.env["device_kind"], error=None, note="", **extra)
    print(f"[{len(self.rows) + 1}] {row} | {impl} | {dtype} | {size} ...", flush=True)
    start = time.perf_counter()
    try:
      entry.update(fn())
    except Exception as e:  # pylint: disable=broad-except
      entry["error"] = f"{type(e).__name__}: {e}"
      entry["traceback"] = traceback.format_exc()
    entry["wall_seconds"] = time.perf_counter() - start
    if entry.get("flops_per_call") and entry.get("seconds"):
      entry["flops_per_second"] = entry["flops_per_call"] / entry["seconds"]
      entry["peak_flops_per_second"] = benchmarking.peak_flops(self.env["device_kind"], dtype)
      entry["peak_share"] = benchmarking.peak_share(
          entry["flops_per_call"], entry["seconds"], entry["peak_flops_per_second"])
    self.rows.append(entry)
    print(f"    {markdown_row(entry)}  ({entry['wall_seconds']:.1f} s)", flush=True)
    return entry

  def repeats_on(self, device: str) -> int:
    """Timed calls of a row run by torch on `device`: 1 for torch on the CPU next to jax on an
    accelerator (full-size depth + IDM takes tens of seconds a call there), else all."""
    return 1 if device == "cpu" and self.env["platform"] != "cpu" else self.repeats

  def guarded(self, fn, **labels) -> None:
    """fn(), which adds rows; if it raises before its rows could, one row with the error."""
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      def reraise(error=e):
        raise error
      self.measure(reraise, **labels)

  def failed_checks(self) -> list:
    return [r for r in self.rows if r.get("check") == "FAIL"]


def _cell(text) -> str:
  return str(text).replace("|", "/").replace("\n", " ")


def markdown_row(r: dict) -> str:
  """One table line; blank cells for figures a row does not have."""
  def num(key, fmt, scale=1.0):
    return format(r[key] * scale, fmt) if r.get(key) is not None else ""
  check = ""
  if r.get("check"):
    check = (f"{r['check']}: {r['max_abs_diff_values']:.1e} / {r['max_abs_diff_grads']:.1e} <= "
             f"{r['tolerance_values']:.1e} / {r['tolerance_grads']:.1e}")
  note = r["note"] if not r.get("error") else f"ERROR {r['error'][:300]}"
  cells = (r["row"], r["impl"], r["dtype"], r["size"], r["device"],
           num("seconds", ".4g", 1e3) + (" ms" if r.get("seconds") is not None else ""),
           num("pairs_per_second", ".4g"),
           num("ratio_to_floor", ".2f") + ("x" if r.get("ratio_to_floor") is not None else ""),
           num("flops_per_second", ".4g", 1e-12), num("peak_share", ".1%"), check, note)
  return "| " + " | ".join(_cell(c) for c in cells) + " |"


def markdown(table: Table, header: dict) -> str:
  """The whole table as markdown, under a line saying where and when it was measured."""
  env = table.env
  lines = ["# Device check", "",
           f"device {env['device_kind']} ({env['platform']}), jax {env['jax']}, jaxlib "
           f"{env['jaxlib']}, peak table entry: {env['peak']}; torch {header['torch']}; "
           f"{header['date_utc']} UTC; {'--small; ' if header['small'] else ''}"
           f"{header['repeats']} timed calls per row (median); total {header['seconds']:.0f} s; "
           f"Pallas vs fused tolerance {table.tolerance:g} x max(1, max |fused|)", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  return "\n".join(lines + [markdown_row(r) for r in table.rows]) + "\n"


# ----------------------------------------------------------------------------- measurements


def _blocked(fn):
  """fn with its result waited for (jax arrays), so that it can be timed."""
  import jax  # pylint: disable=g-import-not-at-top
  return lambda: jax.block_until_ready(fn())


def time_call(fn, repeats: int, outputs: dict | None = None, key: str = "") -> dict:
  """First call (compile + run; the warm-up) and the median of `repeats` more calls of a blocking
  fn; the first call's result goes to outputs[key] if outputs is given."""
  start = time.perf_counter()
  result = fn()
  first = time.perf_counter() - start
  if outputs is not None:
    outputs[key] = result
  seconds, _ = benchmarking.timed(fn, repeats)
  return {"seconds": seconds, "first_call_seconds": first}


def time_train_step(step, state, batch, repeats: int) -> dict:
  """A trainer's jitted step (`training.make_train_step`): compiled once, FLOPs from XLA's cost
  analysis, then timed on its own output states (the state is donated at every call)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  flops = benchmarking.compiled_flops(compiled)
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    holder["loss"] = float(jax.block_until_ready(metrics["loss"]))
  run()
  figures = {"first_call_seconds": time.perf_counter() - start, "flops_per_call": flops}
  figures["seconds"], _ = benchmarking.timed(run, repeats)
  figures["note"] = f"compile + first step {figures['first_call_seconds']:.1f} s" + (
      "" if np.isfinite(holder["loss"]) else "; loss NOT finite")
  return figures


@functools.lru_cache(maxsize=None)
def layer_inputs(batch, length, dim):
  """(x numpy [B, L, D], cotangent numpy, capacity): `chunking_layer.segment_inputs`, whose
  boundaries every implementation finds, and a seeded cotangent. Made once per size (rows 1
  and 2 share them; at L 4,096 the Python loop takes seconds)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  x, _ = chunking_layer.segment_inputs(batch, length, dim, RATIO)
  cot = np.random.default_rng(1).normal(size=x.shape).astype(np.float32) / math.sqrt(dim)
  return x, cot, chunking_layer.chunk_capacity(length, RATIO, CAPACITY_FACTOR)


def pallas_vs_fused(batch, length, dim, tolerance):
  """Row 1's figures: chunk -> tanh -> dechunk with impl "pallas" vs "fused" on one routing."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from hilam_jax.skill import chunking
  x_np, cot_np, capacity = layer_inputs(batch, length, dim)
  x = jnp.asarray(x_np) * math.sqrt(dim)  # entries O(1); the cosine router is scale-free
  cot = jnp.asarray(cot_np) * math.sqrt(dim)
  mask = jnp.ones((batch, length), bool)
  router = chunking.RoutingModule(dim)
  routing = jax.jit(router.apply)(router.init(jax.random.key(0), x[:1], mask[:1]), x, mask)

  def vjp(impl, x, prob, confidence):
    def layer(x, prob, confidence):
      r = routing.replace(boundary_prob=prob, confidence=confidence)
      out = chunking.chunk(x, r, capacity, impl=impl)
      return chunking.dechunk(jnp.tanh(out.chunks), r, out, mask, impl=impl)
    y, pullback = jax.vjp(layer, x, prob, confidence)
    return y, pullback(cot)

  args = (x, routing.boundary_prob, routing.confidence)
  start = time.perf_counter()
  pallas = jax.block_until_ready(jax.jit(functools.partial(vjp, "pallas"))(*args))
  first = time.perf_counter() - start
  fused = jax.jit(functools.partial(vjp, "fused"))(*args)
  diffs, tolerances = [], []
  for part in (0, 1):  # values, gradients
    pairs = list(zip(jax.tree.leaves(pallas[part]), jax.tree.leaves(fused[part])))
    diffs.append(max(float(np.max(np.abs(np.asarray(p) - np.asarray(f)))) for p, f in pairs))
    scale = max([1.0] + [float(np.max(np.abs(np.asarray(f)))) for _, f in pairs])
    tolerances.append(tolerance * scale)
  passed = diffs[0] <= tolerances[0] and diffs[1] <= tolerances[1]
  return {"max_abs_diff_values": diffs[0], "max_abs_diff_grads": diffs[1],
          "tolerance_values": tolerances[0], "tolerance_grads": tolerances[1],
          "check": "pass" if passed else "FAIL", "first_call_seconds": first,
          "note": f"compile + first call {first:.1f} s; capacity {capacity}"}


def interpreted(impl: str) -> str:
  """The note of a timed Pallas row on the CPU, where the kernels run in the interpreter."""
  import jax  # pylint: disable=g-import-not-at-top
  if impl == "pallas" and jax.default_backend() == "cpu":
    return "Pallas interpreted on the CPU: not a speed figure"
  return ""


def torch_device() -> str:
  """"cuda" when jax runs on a GPU and torch sees one, else "cpu" (also without torch)."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "cpu"
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def layer_rows(table: Table, batch, length, dim, group):
  """Row 2 at one size: the matmul floor, fused, pallas, and the PyTorch layer."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  x_np, cot_np, capacity = layer_inputs(batch, length, dim)
  init, loss = chunking_layer.make_jax_layer(dim, capacity, RATIO)
  x, cot = jnp.asarray(x_np), jnp.asarray(cot_np)
  mask = jnp.ones((batch, length), bool)
  params = init(jax.random.key(0), x, mask)
  flops = 3 * chunking_layer.matmul_flops_fwd(batch, length, dim, capacity)
  size = f"B{batch} L{length} D{dim}"
  common = {"group": group, "size": size}
  floor_s = []

  def versus_floor(figures):
    figures["flops_per_call"] = flops
    if not floor_s:  # the floor row itself
      floor_s.append(figures["seconds"])
    figures["floor_seconds"] = floor_s[0]
    figures["ratio_to_floor"] = figures["seconds"] / floor_s[0]
    return figures

  table.measure(lambda: dict(versus_floor(time_call(
      chunking_layer.matmuls_only(params, x, cot, capacity), table.repeats)),
                             note="fwd+bwd of the layer's matmuls alone (same FLOPs)"),
                row="matmul floor", impl="xla", **common)

  grad = jax.value_and_grad(loss, argnums=(0, 1))
  for impl in ("fused", "pallas"):
    step = jax.jit(functools.partial(lambda i, p, x_, c_: grad(p, x_, mask, c_, i), impl))
    table.measure(lambda: dict(versus_floor(time_call(_blocked(lambda: step(params, x, cot)),
                                                      table.repeats)), note=interpreted(impl)),
                  row="chunking layer fwd+bwd", impl=impl, **common)

  device = torch_device()

  def torch_figures():
    run, info = chunking_layer.make_torch_layer(x_np, cot_np, RATIO, device)
    if run is None:
      return {"note": "not installed (h-net-dynamic-chunking)"}
    figures = versus_floor(time_call(run, table.repeats_on(device)))
    figures["note"] = (f"h-net-dynamic-chunking {info['version']}, torch {info['torch']}, "
                       f"{info['torch_threads']} threads")
    return figures
  table.measure(torch_figures, row="chunking layer fwd+bwd", impl="torch",
                device=f"torch {device}", **common)


def main_config(small: bool):
  from experiments.configs import main as main_configs  # pylint: disable=g-import-not-at-top
  return main_configs.get_config("libero_smoke" if small else "libero_long")


def skill_config(small: bool, impl: str = "fused"):
  """The skill trainer's config of row 3 and its SkillModelConfig with chunk_impl `impl`."""
  from hilam_jax.skill import model as skill_model  # pylint: disable=g-import-not-at-top
  config = main_config(small).skill
  config.lambda_rec = 0.0  # L_rec runs the frozen UniSkill FDM: not part of this row
  config.model.latent_dim = uniskill_sides.configs(small)[0].skill_dim  # UniSkill's latents
  config.model.chunk_impl = impl
  return config, skill_model.SkillModelConfig.from_dict(dict(config.model))


@functools.lru_cache(maxsize=None)
def skill_params(small: bool):
  """Random skill-model parameters, made once: every row 3 variant has the same (chunk_impl and
  the compute dtype change no parameter), and on the CPU the init compiles for seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import model as skill_model  # pylint: disable=g-import-not-at-top
  config, model_config = skill_config(small)
  return jax.device_get(skill_model.init_params(model_config, jax.random.key(0),
                                                config.data.window))


def skill_step(small: bool, impl: str, dtype: str, repeats: int) -> dict:
  """Row 3: the skill trainer's jitted step on random latents, one device."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from hilam_jax import training
  from hilam_jax.skill import model as skill_model
  from hilam_jax.skill import trainer as skill_trainer
  config, model_config = skill_config(small, impl)
  module = skill_model.SkillModel(model_config)
  window, batch = config.data.window, config.batch_size
  mesh = training.make_mesh(jax.local_devices()[:1])
  tx = training.make_optimizer(config)
  params = skill_params(small)
  state = training.create_train_state(lambda _: params, tx, jax.random.key(1), mesh)
  step = training.make_train_step(skill_trainer.make_loss_fn(config, module), tx, mesh,
                                  compute_dtype=dtype)
  rng = np.random.default_rng(0)
  data = training.shard_batch(
      {"latents": rng.normal(size=(batch, window, model_config.latent_dim)).astype(np.float32),
       "mask": np.ones((batch, window), bool)}, mesh)
  figures = time_train_step(step, state, data, repeats)
  figures["note"] = "; ".join(n for n in (figures["note"], interpreted(impl)) if n)
  return figures


def skill_size(small: bool) -> str:
  config, _ = skill_config(small)
  return (f"B{config.batch_size} L{config.data.window} widths "
          f"{'x'.join(str(w) for w in config.model.widths)}")


@functools.lru_cache(maxsize=None)
def policy_setup(small: bool):
  """(run config, BakuConfig, random params) of the LIBERO fine-tuning runs
  (`experiment.policy_config`), made once for both dtypes (not modified by the rows)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from hilam_jax import experiment
  from hilam_jax import worlds
  from hilam_jax.policy import baku
  from hilam_jax.policy import networks
  config = main_config(small)
  world = worlds.get_world(config.world)
  run = experiment.policy_config(config, role="flat", dataset="<random batches>", seed=0,
                                 heads=world.action.heads(),
                                 num_steps=config.policy.finetune_steps)
  cfg = networks.model_config(run)
  example = networks.example_inputs(cfg, tuple(run.data.image_size), networks.cameras(run))
  params = jax.jit(functools.partial(baku.BakuPolicy(cfg).init, train=False))(
      {"params": jax.random.key(0)}, example)["params"]
  return run, cfg, jax.device_get(params)


def policy_step(small: bool, dtype: str, repeats: int) -> dict:
  """Row 5: the policy trainer's jitted step (device augmentation on) on random batches."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from hilam_jax import training
  from hilam_jax.policy import baku
  from hilam_jax.policy import networks
  from hilam_jax.policy import trainer as policy_trainer
  run, cfg, params = policy_setup(small)
  module = baku.BakuPolicy(cfg)
  cameras, image_size, batch = networks.cameras(run), tuple(run.data.image_size), run.batch_size
  mesh = training.make_mesh(jax.local_devices()[:1])
  tx = training.make_optimizer(run)
  state = training.create_train_state(lambda _: params, tx, jax.random.key(1), mesh)
  loss_fn = functools.partial(policy_trainer.policy_loss, module=module, head_cfgs=cfg.heads)
  step = training.make_train_step(loss_fn, tx, mesh,
                                  augment_fn=policy_trainer.device_augment_fn(run),
                                  compute_dtype=dtype)
  rng = np.random.default_rng(0)
  inputs = networks.model_inputs(
      cfg, {c: rng.integers(0, 256, (batch, *image_size, 3), dtype=np.uint8) for c in cameras},
      lang=rng.normal(size=(batch, cfg.lang_dim)).astype(np.float32) if cfg.use_lang else None,
      proprio=rng.normal(size=(batch, cfg.proprio_dim)).astype(np.float32))
  targets, masks = {}, {}
  for head in cfg.heads:
    shape = (batch, 1, head.chunk)
    targets[head.name] = (rng.integers(0, head.dim, shape) if head.kind == "categorical" else
                          rng.uniform(-1, 1, (*shape, head.dim)).astype(np.float32))
    masks[head.name] = np.ones(shape, bool)
  data = training.shard_batch({"inputs": inputs, "targets": targets, "masks": masks}, mesh)
  parameters = baku.count_params(params)
  figures = time_train_step(step, state, data, repeats)
  figures["note"] += f"; {parameters:,} parameters"
  return figures


def policy_size(small: bool) -> str:
  from hilam_jax.policy import networks  # pylint: disable=g-import-not-at-top
  run, cfg, _ = policy_setup(small)
  return (f"B{run.batch_size} {len(networks.cameras(run))} cams "
          f"{'x'.join(str(s) for s in run.data.image_size)} proprio {cfg.proprio_dim}")


UNISKILL_ROWS = {"idm": "UniSkill IDM", "depth+idm": "Depth-Anything + IDM"}


def uniskill_weights(workdir: str, small: bool):
  """None when the PyTorch reference's weights were made and converted into workdir (torch +
  transformers importable), else why not (the Flax rows then initialise their own)."""
  try:
    uniskill_sides.build_weights(workdir, small)
    return None
  except ImportError as e:
    return f"not installed ({e})"


def uniskill_pairs(table: Table, side: str, row: str, rgb, depth, outputs: dict, *,
                   small: bool, workdir: str, missing, device: str) -> dict:
  """Pairs/s of one side ("torch", "f32", "bf16") of one UniSkill row; the first call's skill
  latents go to outputs[side] (the Flax rows' error against torch)."""
  if side == "torch":
    if missing:
      return {"note": missing}
    prepare, call = uniskill_sides.torch_side(workdir, small, row, len(os.sched_getaffinity(0)),
                                              device)
  elif not missing:
    prepare, call = uniskill_sides.flax_side(workdir, row, side)
  else:
    prepare, call = uniskill_sides.flax_runner(*uniskill_sides.random_flax_params(small, row),
                                               row, side)
  args = prepare(rgb, depth)
  repeats = table.repeats_on("cuda" if side != "torch" else device)
  figures = time_call(lambda: call(args), repeats, outputs, side)
  figures["pairs_per_second"] = len(rgb) / figures["seconds"]
  if side != "torch" and "torch" in outputs:
    error = uniskill_sides.relative_error(outputs[side], outputs["torch"])
    figures["note"] = f"max rel. err vs torch {error:.1e}"
  elif side == "torch" and repeats < table.repeats:
    figures["note"] = f"torch on the CPU: {repeats} timed call"
  return figures


def uniskill_rows(table: Table, small: bool, workdir: str) -> None:
  """Row 4: pairs/s of the IDM alone and of depth + IDM, torch, Flax float32 and bfloat16."""
  missing = uniskill_weights(workdir, small)
  device = torch_device()
  idm_config = uniskill_sides.configs(small)[0]
  batches = {"idm": 2 if small else 32, "depth+idm": 1 if small else 8}
  for row, label in UNISKILL_ROWS.items():
    batch = batches[row]
    rgb, depth = uniskill_sides.make_inputs(idm_config, batch, seed=batch)
    outputs = {}
    common = dict(group="uniskill", row=label, size=f"B{batch} {idm_config.image_size}px")
    pairs = functools.partial(uniskill_pairs, table, row=row, rgb=rgb, depth=depth,
                              outputs=outputs, small=small, workdir=workdir, missing=missing,
                              device=device)
    table.measure(functools.partial(pairs, "torch"), impl="torch", device=f"torch {device}",
                  **common)
    for side, dtype in (("f32", "float32"), ("bf16", "bfloat16")):
      table.measure(functools.partial(pairs, side), impl="flax", dtype=dtype, **common)


def _size(describe, small: bool) -> str:
  """A row group's size label; "?" if building the config fails (its rows then say why)."""
  try:
    return describe(small)
  except Exception:  # pylint: disable=broad-except
    return "?"


def run_groups(table: Table, groups, small: bool) -> None:
  """Every row of the selected groups, in the order of the module docstring."""
  batch, lengths, dim = (2, (16, 64), 8) if small else (16, (256, 4096), 256)
  if "pallas" in groups:
    for length in lengths:
      table.measure(functools.partial(pallas_vs_fused, batch, length, dim, table.tolerance),
                    group="pallas",
                    row="pallas vs fused", impl="pallas", size=f"B{batch} L{length} D{dim}")
  if "layer" in groups:
    for length in lengths:
      table.guarded(functools.partial(layer_rows, table, batch, length, dim, "layer"),
                    group="layer", row="chunking layer fwd+bwd", impl="setup",
                    size=f"B{batch} L{length} D{dim}")
  if "skill" in groups:
    size = _size(skill_size, small)
    for impl in ("fused", "pallas"):
      for dtype in DTYPES:
        table.measure(functools.partial(skill_step, small, impl, dtype, table.repeats),
                      group="skill", row="skill train step", impl=impl, dtype=dtype, size=size)
  if "uniskill" in groups:
    with tempfile.TemporaryDirectory(prefix="device_check_uniskill_") as workdir:
      table.guarded(functools.partial(uniskill_rows, table, small, workdir), group="uniskill",
                    row="UniSkill labeling", impl="setup")
  if "policy" in groups:
    size = _size(policy_size, small)
    for dtype in DTYPES:
      table.measure(functools.partial(policy_step, small, dtype, table.repeats), group="policy",
                    row="BAKU train step", impl="flax", dtype=dtype, size=size)


def output_paths(out: str) -> tuple[str, str]:
  """<out stem>.json and <out stem>.md."""
  stem = os.path.splitext(out)[0]
  return stem + ".json", stem + ".md"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  small = _SMALL.value
  groups = tuple(_GROUPS.value or GROUPS)
  unknown = set(groups) - set(GROUPS)
  if unknown:
    raise app.UsageError(f"--groups: unknown {sorted(unknown)}; groups: {', '.join(GROUPS)}")
  if small:  # before jax starts its CPU client: compilation is most of a tiny run
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SMALL_XLA_FLAGS).strip()
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (benchmark_uniskill.py)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
  # pylint: disable=g-import-not-at-top
  from data_pipeline import run_info
  from hilam_jax import logs
  logs.quiet_library_logs()
  start = time.perf_counter()
  table = Table(environment(), _REPEATS.value or (2 if small else 10), _TOLERANCE.value)
  print(f"device check on {table.env['device_kind']} ({table.env['platform']}), jax "
        f"{table.env['jax']}: groups {', '.join(groups)}", flush=True)
  run_groups(table, groups, small)
  versions = run_info.package_versions(run_info.PACKAGES + ("h-net-dynamic-chunking",))
  header = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "small": small,
            "repeats": table.repeats, "seconds": time.perf_counter() - start,
            "torch": versions.get("torch") or "not installed"}
  text = markdown(table, header)
  print(text)
  failed = table.failed_checks()
  if _OUT.value:
    json_path, md_path = output_paths(_OUT.value)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    run_info.write_json_atomic(json_path, dict(
        header, environment=table.env, columns=COLUMNS, tolerance=table.tolerance, groups=groups,
        peaks=benchmarking.PEAKS, versions=versions, rows=table.rows, failed_checks=len(failed)))
    with open(md_path, "w") as f:
      f.write(text)
    print(f"written {json_path} and {md_path}")
  if failed:
    print(f"{len(failed)} correctness check(s) FAILED")
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)

"""Shared pieces of the benchmark scripts in `experiments/`."""
import re
import statistics
import time


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a jitted float32 size x size matmul, best of `repeats` warm runs: the machine's
  practical peak, measured in the same run as the figures compared against it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.asarray(jax.random.normal(jax.random.key(0), (size, size)), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def timed(fn, repeats):
  """Median and min seconds of `repeats` calls of fn (already warm; fn must block until its
  result is ready, or the time is the dispatch's)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), min(times)


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled jax computation (`jax.jit(f).lower(...).compile()`), from
  XLA's cost analysis; older jax versions return a one-element list of dicts."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


# Peak FLOP/s per chip, dense (no structured sparsity), by dtype; None: no such unit.
#   NVIDIA H100 datasheet: SXM TF32 989 / BF16 1,979 TFLOPS, PCIe 756 / 1,513, both "with
#     sparsity" (dense: half).
#   NVIDIA A100 datasheet: TF32 156, BF16 312 TFLOPS (dense).
#   NVIDIA L4 datasheet: TF32 120, BF16 242 TFLOPS, "with sparsity" (dense: half).
#   NVIDIA T4 datasheet: FP32 8.1 TFLOPS; no TF32 or BF16 tensor cores.
#   Google Cloud TPU system architecture pages, bf16 per chip: v4 275, v5e 197, v5p 459,
#     v6e (Trillium) 918 TFLOPS.
PEAKS = {
    "H100 PCIe": {"float32": 378e12, "bfloat16": 756.5e12},
    "H100 SXM": {"float32": 494.5e12, "bfloat16": 989.5e12},
    "A100": {"float32": 156e12, "bfloat16": 312e12},
    "L4": {"float32": 60e12, "bfloat16": 121e12},
    "T4": {"float32": 8.1e12, "bfloat16": None},
    "TPU v4": {"float32": 275e12, "bfloat16": 275e12},
    "TPU v5e": {"float32": 197e12, "bfloat16": 197e12},
    "TPU v5p": {"float32": 459e12, "bfloat16": 459e12},
    "TPU v6e": {"float32": 918e12, "bfloat16": 918e12},
}
# jax's device_kind -> PEAKS key: TPUs by their exact names (v5e and v6e report "lite"), GPUs by
# the model in the marketing name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla T4";
# word boundaries keep "L40S" from matching "L4"; the H100 NVL is not in the table). First
# match wins.
DEVICE_KINDS = (
    (r"^TPU v4$", "TPU v4"), (r"^TPU v5 ?(lite|e)$", "TPU v5e"), (r"^TPU v5p?$", "TPU v5p"),
    (r"^TPU v6 ?(lite|e)$", "TPU v6e"), (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b.*\bNVL\b", "unknown"), (r"\bH100\b", "H100 SXM"), (r"\bA100\b", "A100"),
    (r"\bL4\b", "L4"), (r"\bT4\b", "T4"))


def peak_name(device_kind: str) -> str:
  """The PEAKS key of a jax `device_kind`, or "unknown" (CPUs, and chips not in the table)."""
  for pattern, name in DEVICE_KINDS:
    if re.search(pattern, device_kind.strip(), re.IGNORECASE):
      return name
  return "unknown"


def peak_flops(device_kind: str, dtype: str):
  """Peak FLOP/s of one chip of `device_kind` for `dtype` ("float32" / "bfloat16"), or None."""
  return PEAKS.get(peak_name(device_kind), {}).get(dtype)


def peak_share(flops_per_call: float, seconds: float, peak):
  """Achieved FLOP/s (flops / seconds) as a fraction of `peak`; None when the peak is unknown."""
  if not peak:
    return None
  return flops_per_call / seconds / peak

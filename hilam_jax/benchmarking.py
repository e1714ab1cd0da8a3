"""Shared pieces of the benchmark scripts in `experiments/`."""
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

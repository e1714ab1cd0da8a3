"""The dynamic-chunking layer that `benchmark_chunking.py` and `device_check.py` time, in JAX and
in PyTorch (`h-net-dynamic-chunking`), with the inputs and the matmul floor they share.

The layer (fwd + bwd): routing (q/k projections, cosine of neighbours) -> chunk (capacity C =
ceil(L / N * capacity_factor)) -> main-network stand-in (Dense D -> D on the chunks) -> dechunk
(EMA, upsample, STE) -> + residual projection (Dense D -> D of the input); loss = <y, fixed
cotangent> + RATIO_LOSS_WEIGHT * ratio loss. No flags here: the scripts that import this module
keep their own.
"""
import math

RATIO_LOSS_WEIGHT = 0.03


def chunk_capacity(length, ratio, capacity_factor):
  """C = ceil(L / N * capacity_factor), clipped to [1, L]."""
  return max(1, min(length, math.ceil(length / ratio * capacity_factor)))


def matmul_flops_fwd(batch, length, dim, capacity):
  """Forward matmul FLOPs of the layer: q, k, residual on B L rows, main network on B C rows
  (x3 for forward + backward)."""
  return 2 * batch * dim * dim * (3 * length + capacity)


def segment_inputs(batch, length, dim, ratio, seed=0):
  """x [B, L, D] float32 of piecewise-constant segments with exactly round(L / N) boundaries.

  Consecutive segment vectors have cosine about -0.7 (p = (1 - cos) / 2 about 0.85 > 0.5) and
  positions inside a segment differ by a small noise (p about 0), so the identity router finds
  exactly the segment starts.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  num = max(1, min(length, int(round(length / ratio))))
  x = np.zeros((batch, length, dim), np.float32)
  starts = np.zeros((batch, length), bool)
  for i in range(batch):
    positions = np.sort(rng.choice(np.arange(1, length), size=num - 1, replace=False))
    starts[i, 0] = True
    starts[i, positions] = True
    vec = rng.normal(size=dim)
    vec /= np.linalg.norm(vec)
    for t in range(length):
      if t > 0 and starts[i, t]:
        fresh = rng.normal(size=dim)
        fresh /= np.linalg.norm(fresh)
        vec = -0.7 * vec + 0.714 * fresh
        vec /= np.linalg.norm(vec)
      x[i, t] = vec + 1e-3 * rng.normal(size=dim)
  return x, starts


def make_jax_layer(dim, capacity, ratio):
  """(init(rng) -> params, loss(params, x, mask, cot, impl, boundary_mask=None) -> scalar)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from hilam_jax.skill import chunking
  router = chunking.RoutingModule(dim)

  def init(rng, x, mask):
    k_main, k_res = jax.random.split(rng)
    scale = 1.0 / math.sqrt(dim)
    return {"routing": router.init(rng, x[:1], mask[:1])["params"],
            "main_w": jax.random.normal(k_main, (dim, dim)) * scale,
            "main_b": jnp.zeros((dim,)),
            "res_w": jax.random.normal(k_res, (dim, dim)) * scale}

  def loss(params, x, mask, cot, impl, boundary_mask=None):
    routing = router.apply({"params": params["routing"]}, x, mask)
    if boundary_mask is not None:      # the eager reference needs concrete boundaries (same value)
      routing = routing.replace(boundary_mask=boundary_mask)
    chunk_out = chunking.chunk(x, routing, capacity, impl=impl)              # [B, C, D]
    inner = chunk_out.chunks @ params["main_w"] + params["main_b"]           # main network
    y = chunking.dechunk(inner, routing, chunk_out, mask, impl=impl)         # [B, L, D]
    y = y + x @ params["res_w"]                                              # residual
    return (jnp.sum(y * cot)
            + RATIO_LOSS_WEIGHT * chunking.ratio_loss(routing, mask, ratio))

  return init, loss


def chunking_routing(params, x, mask, dim):
  from hilam_jax.skill import chunking  # pylint: disable=g-import-not-at-top
  return chunking.RoutingModule(dim).apply({"params": params["routing"]}, x, mask)


def matmuls_only(params, x, cot, capacity):
  """run() of fwd+bwd of just the layer's matmuls (q, k, main on C rows, residual), jitted."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  wq, wk = params["routing"]["q"]["kernel"], params["routing"]["k"]["kernel"]

  def loss(p, x_):
    q, k = x_ @ p[0], x_ @ p[1]
    inner = x_[:, :capacity] @ p[2]
    y = x_ @ p[3]
    return (jnp.sum(q[:, :-1] * k[:, 1:]) + jnp.sum(inner * cot[:, :capacity])
            + jnp.sum(y * cot))

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  args = ([wq, wk, params["main_w"], params["res_w"]], x)
  for _ in range(3):
    jax.block_until_ready(fn(*args))
  return lambda: jax.block_until_ready(fn(*args))


def make_torch_layer(x_np, cot_np, ratio, device="cpu"):
  """(run() doing fwd + bwd of h-net-dynamic-chunking's layer, info), or (None, {}) if it is not
  installed. On "cuda" run() synchronises before it returns, so that it can be timed."""
  try:
    # pylint: disable=g-import-not-at-top
    import torch
    from h_net_dynamic_chunking import DynamicSequenceChunker
    import importlib.metadata as md
  except ImportError as e:
    print(f"h-net-dynamic-chunking: not installed ({e}); skipped")
    return None, {}
  torch.manual_seed(0)
  dim = x_np.shape[-1]
  chunker = DynamicSequenceChunker(dim=dim, target_avg_token_length=ratio,
                                   ratio_loss_weight=RATIO_LOSS_WEIGHT, handle_residual_proj=True)
  with torch.no_grad():          # identity q/k like ours, so both see the same boundaries
    eye = torch.eye(dim)
    chunker.to_queries_keys.weight.copy_(torch.cat([eye, eye], 0))
  main = torch.nn.Linear(dim, dim)
  chunker.to(device)
  main.to(device)
  x = torch.tensor(x_np, requires_grad=True, device=device)
  cot = torch.tensor(cot_np, device=device)
  params = [x] + list(chunker.parameters()) + list(main.parameters())
  info = {"version": md.version("h-net-dynamic-chunking"), "torch": torch.__version__,
          "torch_threads": torch.get_num_threads(), "device": device}

  def run():
    out = chunker(x)
    y = out.upsample_fn(main(out.downsampled))
    loss = (y * cot).sum() + out.weighted_aux_ratio_loss
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    if device != "cpu":
      torch.cuda.synchronize()
    return grads, out

  _, out = run()
  info["downsampled_length"] = int(out.downsampled.shape[1])
  return (lambda: run()), info

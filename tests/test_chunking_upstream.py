"""Dynamic chunking (hilam_jax/skill/chunking.py) against the PyTorch H-Net layer on PyPI.

The reference is `DynamicSequenceChunker` of `h-net-dynamic-chunking` 0.5.19 (lucidrains; in the
`bench` and `test` extras of setup.py), file h_net_dynamic_chunking/h_net_dynamic_chunking.py;
"upstream Lnnn" below are lines of that file. Both sides get the SAME inputs and the SAME
projection weights, and are compared in float32 in value AND in gradient w.r.t. the encoder
outputs x, the router's two projection matrices and the dechunk input (the main network's output),
on four scalar losses: a weighted sum of p_t (t >= 1, valid), of the chunk vectors, of the dechunk
output (chunk -> main-network stand-in tanh(. M) + e -> dechunk), and the ratio loss. Our path is
the default "fused" one; tests/test_chunking.py pins "reference" and "pallas" to it.

Cases: a random batch of full-length sequences (upstream called without `lens`); a padded batch
(lengths 12, 9, 5, 1: upstream supports masks through `lens`, upstream L247-L261, L187-L190,
L327-L337); length-1 sequences (L = 1); and a batch whose first position is a boundary only
because it is forced (upstream's p_0 = 0.2 < 0.5). Rows with no valid position at all are not
compared: upstream averages the ratio loss over every row (L341), ours over rows with a valid
position; test_chunking.py covers them for ours.

Weights. Upstream has one Linear(D, 2 D) (L85) whose output halves are "queries" and "keys" (L216)
and scores p_t = (1 - cos(queries_t, keys_{t-1})) / 2 (L225, L236-L238), as the paper writes it
(q_t . k_{t-1}). goombalab/hnet's `RoutingModule` (hnet/modules/dc.py), which ours follows, scores
cos(q_proj(x_{t-1}), k_proj(x_t)). The cosine is symmetric, so this is a naming difference only:
our `q` (applied at t - 1) takes upstream's key rows W[D:], our `k` (applied at t) its query rows
W[:D], each transposed (torch computes x W^T, flax x kernel).

Conventions that differ, and how the comparison handles them (ours follows the paper, H-Net,
Hwang et al. 2025, "Dynamic Chunking for End-to-End Hierarchical Sequence Modeling", and where
the paper leaves it open goombalab/hnet's dc.py):
  - First position. Paper (p_1 = 1.0) and goombalab (PAD_PROB = 1.0) fix p_0 = 1, so b_0 = 1,
    c_0 = 1 and the first chunk enters the EMA with P_0 = 1. Upstream compares the first query
    with a learned `start_key_token` (L89, "presumably ... open an issue if i got it wrong") and
    forces only b_0 (L242-L243): its p_0 is whatever that cosine gives, and it enters c_0 (L305),
    P_0 (L297, L301) and G (L329). In the first three cases every row's x_0 is a positive multiple
    of one vector and the start key is set to minus that direction's query, so upstream's p_0 = 1
    (up to rounding) and everything is compared; `test_first_position_forced` keeps a start key
    with p_0 = 0.2 and compares what stays defined the same (b, p_t for t >= 1, the chunks) and
    pins the difference in the dechunk output.
  - Where P multiplies. Paper eq. (5): zbar_j = P_j zhat_j + (1 - P_j) zbar_{j-1} on the main
    network's OUTPUT zhat. Upstream multiplies P into the main network's INPUT (L301) and scans
    h_j = (1 - P_j) h_{j-1} + input_j (L159, L299): the same only for a linear homogeneous main
    network. Transform (a layout change, no change of either side's maths): upstream's downsampled
    tokens are divided by its own P (which gives the plain boundary vectors, our chunks, with no
    gradient through P), and upstream's upsample is given P * zhat, so that its scan computes
    eq. (5).
  - EMA clip. goombalab clips P to [1e-4, 1 - 1e-4] in the dechunk (ours: chunking_common.py,
    EMA_PROB_MIN/MAX); upstream does not clip (L299). With p_0 = 1 that is a 1e-4 relative
    difference of every output, so the test hands upstream's scan the clipped P (gates = 1 - P
    replaced in its intermediates), and `test_ema_clip_convention` pins the unclipped difference.
  - Clamp of p to [0, 1] (goombalab, ours) against none (upstream L238): rounding only.
  - Threshold: b_t = p_t > 0.5 strictly in both (upstream L240; goombalab's argmax, ties to "no
    boundary"; the paper writes >= 0.5). Inputs keep every valid |p_t - 0.5| > 1e-3, asserted, so
    rounding cannot flip a boundary.
  - Straight-through estimator: c + stop_gradient(1 - c) in both (upstream L53-L54, L318,
    L194-L195; the paper's STE); goombalab's STE returns exact ones with the same gradient.
    Upstream skips the scale when its input needs no gradient: here it always does.
  - Learning-rate modulation (paper, appendix C): upstream scales the gradients of the chunk and
    dechunk outputs by 1/0.75 and 0.75 (L56-L61, L200, L356); ours leaves per-level rates to the
    optimizer (`level_lr_multipliers`). Built with learning_rate_difference=1.
  - Ratio loss, eq. (10): F (no gradient) and G per sequence over valid positions, averaged over
    rows (L323-L341). Upstream's default `straight_through_frac_vecs=True` (L76, L333-L335) gives
    F a sigmoid straight-through gradient (not in the paper): built with False. Our default pools
    F and G over the batch; `per_sequence=True` is the per-row average compared here. Upstream's
    weighted loss (x 0.03, L342) is not compared, its unweighted `aux_ratio_loss` is.
  - Downsampled length: upstream pads to the batch's largest chunk count K (L279, L293) with a
    `mask` and `chunk_lens` (L263-L270); ours has a static capacity C (here C = L, so nothing
    overflows: upstream has no capacity, so `overflow` cannot be compared) with `chunk_mask`. The
    first K slots are compared; ours must be 0 / False / without gradient beyond K. chunk_lens is
    compared with the number of valid positions per chunk from our `chunk_index`.
  - Padding: upstream leaves p and c at padded positions as computed from the padded vectors
    (only b is masked, L249); ours sets p = 0 and c = 1 there. Values are compared at valid
    positions; the dechunk output is 0 at padding in both, and d/dx at padding is 0 in both.
Not compared (no upstream equivalent or not the same layer): our `overflow`/capacity behaviour,
`boundary_index`, streaming (`StreamingChunker` against upstream's `cache`; ours is pinned to the
full pass in test_chunking.py), bfloat16, upstream's residual projection, attention pooling and
chunk-length embeddings (all off by default).

Tolerances (float32). Measured max |ours - upstream| over all cases on this machine (jax 0.10,
torch 2.13 CPU, XLA at the suite's optimisation level 0): values 6e-8 (p), 4.8e-7 (chunks),
3.6e-7 (dechunk output; entries up to 3), 1.1e-5 on a summed loss of 31 (4e-7 relative; the
ratio loss exactly equal); gradients 1.4e-6 (d dechunk-loss / d k kernel, entries up to 6), at
most 7e-7 for the others. Asserted: |ours - upstream| <= ATOL + RTOL |upstream| with
ATOL = RTOL = 1e-5; the largest difference uses 9.5% of that bound (a loss value), gradients at
most 6.7%, values at most 2%, so the bound is 10-200x above what was measured.

Checked by hand once (each change to OUR side, then reverted) that the comparison fails: one
entry of our q kernel perturbed by 1e-3; the kernels copied untransposed; our q and k swapped;
the EMA's weights swapped in chunking._dechunk_fused_forward (zbar_j = (1 - P_j) zhat_j +
P_j zbar_{j-1}); the confidence without gradient (no STE); our EMA without the clip; our ratio
loss pooled over the batch instead of per sequence. Every change fails the random and padded
cases. The length-1 case fails for the EMA and clip changes only, as it must: with one position
p = (1) is a constant, so the router's weights, the confidence's gradient and the pooling have no
effect there (that case checks chunk and dechunk). test_first_position_forced
fails for all but the STE change (it compares no dechunk gradient), test_ema_clip_convention for
the EMA, clip, untransposed and swapped changes.
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hilam_jax.skill import chunking as ck

torch = pytest.importorskip("torch")
hnet_dc = pytest.importorskip("h_net_dynamic_chunking")

D = 8
N = 3.0              # target ratio (upstream: target_avg_token_length)
ATOL = RTOL = 1e-5   # 10-200x the measured differences (module docstring)
P_MARGIN = 1e-3      # every valid p_t (t >= 1) is at least this far from the 0.5 threshold
# goombalab's clip of P in the dechunk EMA (dc.py, DeChunkLayer); written out rather than read
# from chunking_common, so that a change of ours shows up here.
CLIP_MIN, CLIP_MAX = 1e-4, 1.0 - 1e-4
LOSSES = ("routing", "chunk", "dechunk", "ratio")


def _inputs(seed, bsz, length):
  """Upstream's projection weight W [2 D, D] (identity halves plus noise, so that some but not all
  positions are boundaries), x, the main-network stand-in M, its offset e and the losses' weights.
  x_0 of every row is a positive multiple of one vector `v`, so that one start key gives every
  row the same first-position cosine."""
  rng = np.random.default_rng(seed)
  w = np.concatenate([np.eye(D), np.eye(D)]) + 0.4 * rng.normal(size=(2 * D, D))
  x = rng.normal(size=(bsz, length, D))
  v = rng.normal(size=D)
  x[:, 0] = np.linspace(0.5, 2.0, bsz)[:, None] * v
  arrays = dict(w=w, x=x, v=v, main=rng.normal(size=(D, D)) / np.sqrt(D),
                e=rng.normal(size=(bsz, length, D)), w_p=rng.normal(size=(bsz, length)),
                w_chunk=rng.normal(size=(bsz, length, D)),
                w_out=rng.normal(size=(bsz, length, D)))
  return {k: np.asarray(a, np.float32) for k, a in arrays.items()}


def _valid(lens, bsz, length):
  """[B, L] bool validity mask; lens None: every position is valid."""
  lens = np.full(bsz, length) if lens is None else np.asarray(lens)
  return np.arange(length)[None] < lens[:, None]


def _start_key(inputs, first_cos):
  """A start key whose cosine with every row's first query (upstream: W[:D] x_0) is first_cos."""
  q0 = inputs["w"][:D] @ inputs["v"]
  q0 /= np.linalg.norm(q0)
  other = np.random.default_rng(0).normal(size=D)
  other -= other @ q0 * q0
  other /= np.linalg.norm(other)
  return np.asarray(first_cos * q0 + np.sqrt(1.0 - first_cos ** 2) * other, np.float32)


# ----------------------------------------------------------------------------- upstream


def _upstream(inputs, lens, start_key, clip=True, p0_override=None):
  """Upstream's layer on the inputs: values in our layout, and per loss the gradients
  (dx, d q kernel, d k kernel, de) in our layout (see the module docstring for the transforms)."""
  layer = hnet_dc.DynamicSequenceChunker(D, target_avg_token_length=N,
                                         learning_rate_difference=1.0,
                                         straight_through_frac_vecs=False)
  with torch.no_grad():
    layer.to_queries_keys.weight.copy_(torch.from_numpy(inputs["w"]))
    layer.start_key_token.copy_(torch.from_numpy(start_key))
  valid = _valid(lens, *inputs["x"].shape[:2])
  x = torch.tensor(inputs["x"], requires_grad=True)
  out, inter = layer(x, lens=None if lens is None else torch.tensor(lens),
                     return_intermediates=True)
  num = out.downsampled.shape[1]                                        # K
  e = torch.tensor(inputs["e"][:, :num], requires_grad=True)
  prob = 1.0 - inter.gates                                              # P [B, K], 0 if empty
  chunks = out.downsampled / torch.where(inter.mask, prob, torch.ones_like(prob))[..., None]
  zhat = torch.tanh(chunks @ torch.from_numpy(inputs["main"])) + e
  if p0_override is not None:
    prob = torch.cat([torch.full_like(prob[:, :1], p0_override), prob[:, 1:]], dim=1)
  if clip:
    prob = torch.where(inter.mask, prob.clamp(CLIP_MIN, CLIP_MAX), prob)
  upsampled = layer.upsample(prob[..., None] * zhat, inter._replace(gates=1.0 - prob))
  valid_t = torch.from_numpy(valid)
  losses = {
      "routing": (torch.from_numpy(inputs["w_p"]) * inter.probs * valid_t)[:, 1:].sum(),
      "chunk": (torch.from_numpy(inputs["w_chunk"][:, :num]) * chunks).sum(),
      "dechunk": (torch.from_numpy(inputs["w_out"]) * upsampled).sum(),
      "ratio": inter.aux_ratio_loss,
  }
  weight = layer.to_queries_keys.weight
  grads = {}
  for name, loss in losses.items():
    gx, gw, ge = torch.autograd.grad(loss, [x, weight, e], retain_graph=True, allow_unused=True)
    gw = torch.zeros_like(weight) if gw is None else gw
    ge = torch.zeros_like(e) if ge is None else ge
    grads[name] = (gx.numpy(), gw[D:].T.numpy(), gw[:D].T.numpy(), ge.numpy())
  values = dict(p=inter.probs.detach().numpy(), b=inter.boundary_mask.numpy(),
                chunks=chunks.detach().numpy(), chunk_mask=inter.mask.numpy(),
                chunk_lens=inter.chunk_lens.numpy(), out=upsampled.detach().numpy(),
                zhat=zhat.detach().numpy(),
                losses=np.array([float(losses[k].detach()) for k in LOSSES]))
  return values, grads


# ----------------------------------------------------------------------------- ours


@jax.jit
def _ours_jacobian(params, x, e, mask, main, w_p, w_chunk, w_out):
  """d (the four losses) / d (params, x, e), and the values; capacity C = L (no overflow)."""
  module = ck.RoutingModule(D)

  def losses(params, x, e):
    routing = module.apply(params, x, mask)
    chunks = ck.chunk(x, routing, x.shape[1])
    zhat = jnp.tanh(chunks.chunks @ main) + e
    out = ck.dechunk(zhat, routing, chunks, mask)
    vec = jnp.stack([
        jnp.sum((w_p * routing.boundary_prob * mask)[:, 1:]),
        jnp.sum(w_chunk * chunks.chunks),
        jnp.sum(w_out * out),
        ck.ratio_loss(routing, mask, N, per_sequence=True)])
    return vec, (vec, routing, chunks, out, zhat)

  return jax.jacrev(losses, argnums=(0, 1, 2), has_aux=True)(params, x, e)


def _ours(inputs, valid):
  w = inputs["w"]
  params = {"params": {"q": {"kernel": jnp.asarray(w[D:].T)},
                       "k": {"kernel": jnp.asarray(w[:D].T)}}}
  (gp, gx, ge), (vec, routing, chunks, out, zhat) = _ours_jacobian(
      params, inputs["x"], inputs["e"], jnp.asarray(valid), inputs["main"], inputs["w_p"],
      inputs["w_chunk"], inputs["w_out"])
  gq, gk = gp["params"]["q"]["kernel"], gp["params"]["k"]["kernel"]
  grads = {name: tuple(np.asarray(g[i]) for g in (gx, gq, gk, ge))
           for i, name in enumerate(LOSSES)}
  index = np.asarray(chunks.chunk_index)
  lens = np.stack([np.bincount(index[i][valid[i]], minlength=index.shape[1])
                   for i in range(index.shape[0])])
  values = dict(p=np.asarray(routing.boundary_prob), b=np.asarray(routing.boundary_mask),
                chunks=np.asarray(chunks.chunks), chunk_mask=np.asarray(chunks.chunk_mask),
                chunk_lens=lens, out=np.asarray(out), zhat=np.asarray(zhat),
                losses=np.asarray(vec), overflow=np.asarray(chunks.overflow))
  return values, grads


# ----------------------------------------------------------------------------- helpers


def _close(ours, ref, what, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(ref, np.float64),
                             rtol=rtol, atol=atol, err_msg=what)


def _check_routing_and_chunks(ours, ref, valid):
  """b everywhere, p_t (t >= 1) at valid positions, chunks / chunk_mask / chunk_lens in the
  first K slots (ours is empty beyond K)."""
  np.testing.assert_array_equal(ours["b"], ref["b"])
  assert ours["b"][:, 0].all() and not ours["b"][~valid].any()
  rest = valid[:, 1:]
  assert (np.abs(ref["p"][:, 1:][rest] - 0.5) > P_MARGIN).all(), "inputs too near the threshold"
  _close(ours["p"][:, 1:][rest], ref["p"][:, 1:][rest], "p_t, t >= 1")
  num = ref["chunks"].shape[1]
  _close(ours["chunks"][:, :num], ref["chunks"], "chunks")
  np.testing.assert_array_equal(ours["chunks"][:, num:], 0.0)
  np.testing.assert_array_equal(ours["chunk_mask"][:, :num], ref["chunk_mask"])
  assert not ours["chunk_mask"][:, num:].any()
  np.testing.assert_array_equal(ours["chunk_lens"][:, :num], ref["chunk_lens"])
  np.testing.assert_array_equal(ours["overflow"], 0)


def _check_grads(ours, ref, names, num):
  for name in names:
    for what, g, ref_g in zip(("x", "q kernel", "k kernel", "e"), ours[name], ref[name]):
      if what == "e":                      # ours has C = L slots, upstream K
        np.testing.assert_array_equal(g[:, num:], 0.0)
        g = g[:, :num]
      _close(g, ref_g, f"d {name} loss / d {what}")


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed, bsz, length, lens", [
    (11, 4, 12, None),              # random batch, full length (upstream without `lens`)
    (12, 4, 12, [12, 9, 5, 1]),     # padded, with a length-1 row
    (13, 3, 1, None),               # length-1 sequences
])
def test_matches_upstream(seed, bsz, length, lens):
  """With upstream's p_0 made 1 (start key opposite every row's first query), routing, chunk and
  dechunk agree in value and in every gradient, and so does the per-sequence ratio loss."""
  inputs = _inputs(seed, bsz, length)
  valid = _valid(lens, bsz, length)
  ref, ref_grads = _upstream(inputs, lens, _start_key(inputs, -1.0))
  ours, grads = _ours(inputs, valid)
  _close(ref["p"][:, 0], 1.0, "upstream p_0 with the opposite start key", atol=1e-6)
  np.testing.assert_array_equal(ours["p"][:, 0], 1.0)
  _check_routing_and_chunks(ours, ref, valid)
  _close(ours["out"][valid], ref["out"][valid], "dechunk output")
  np.testing.assert_array_equal(ours["out"][~valid], 0.0)
  np.testing.assert_array_equal(ref["out"][~valid], 0.0)
  _close(ours["losses"], ref["losses"], "losses")
  num = ref["chunks"].shape[1]
  _check_grads(grads, ref_grads, LOSSES, num)
  # The comparison is not vacuous: the dechunk loss reaches x, both router matrices and e.
  for g in ref_grads["dechunk"][:3 if length > 1 else 1] + ref_grads["dechunk"][3:]:
    assert np.abs(g).max() > 1e-2
  assert not grads["dechunk"][0][~valid].any()       # padded positions get no gradient
  if lens is not None:
    assert not ref_grads["dechunk"][0][~valid].any()
  if length > 1:
    assert 1 < num < length                           # some but not all positions are boundaries


def test_ema_clip_convention():
  """Upstream's unclipped EMA (P_0 = 1) against ours, which clips P to [1e-4, 1 - 1e-4] as
  goombalab does: on chunk 0's positions ours is exactly CLIP_MAX = 1 - 1e-4 times upstream's
  (zbar_0 = P_0 zhat_0), so this fails if our clip or our p_0 = 1 changed."""
  bsz, length = 4, 12
  inputs = _inputs(11, bsz, length)
  valid = _valid(None, bsz, length)
  ref, _ = _upstream(inputs, None, _start_key(inputs, -1.0), clip=False)
  ours, _ = _ours(inputs, valid)
  first = np.cumsum(ours["b"], axis=1) == 1                # positions of chunk 0
  zhat0 = np.broadcast_to(ours["zhat"][:, :1], ours["out"].shape)[first]
  _close(ref["out"][first], zhat0, "upstream chunk 0 = zhat_0 (P_0 = 1, no clip)")
  _close(ours["out"][first], CLIP_MAX * zhat0, "ours chunk 0 = (1 - 1e-4) zhat_0")
  assert np.abs(ours["out"][first] - ref["out"][first]).max() > 1e-5   # the clip is visible


def test_first_position_forced():
  """A start key with upstream p_0 = 0.2: b_0 is a boundary only because both force it.
  Compared: b, p_t for t >= 1, the chunks (values and gradients of the routing and chunk
  losses). The first position itself follows different conventions (module docstring): ours has
  p_0 = c_0 = 1, upstream p_0 = c_0 = 0.2, and its first chunk enters the EMA with P_0 = 0.2, so
  its output on chunk 0 is 0.2 zhat_0 where ours is (1 - 1e-4) zhat_0; with P_0 set to ours
  upstream's dechunk output agrees everywhere (values only: upstream's c_0 = p_0 still sends
  gradient to x_0 and the router through the start-key cosine, ours has none there)."""
  bsz, length = 4, 12
  inputs = _inputs(14, bsz, length)
  valid = _valid(None, bsz, length)
  key = _start_key(inputs, 0.6)                       # p_0 = (1 - 0.6) / 2 = 0.2
  ref, ref_grads = _upstream(inputs, None, key)
  ours, grads = _ours(inputs, valid)
  _close(ref["p"][:, 0], 0.2, "upstream p_0", atol=1e-6)
  assert ref["b"][:, 0].all()                         # forced (upstream L243) although p_0 < 0.5
  np.testing.assert_array_equal(ours["p"][:, 0], 1.0)
  _check_routing_and_chunks(ours, ref, valid)
  _check_grads(grads, ref_grads, ("routing", "chunk"), ref["chunks"].shape[1])
  first = np.cumsum(ours["b"], axis=1) == 1
  zhat0 = np.broadcast_to(ours["zhat"][:, :1], ours["out"].shape)[first]
  _close(ref["out"][first], 0.2 * zhat0, "upstream chunk 0 = p_0 zhat_0", atol=1e-6)
  _close(ours["out"][first], CLIP_MAX * zhat0, "ours chunk 0 = (1 - 1e-4) zhat_0")
  aligned, _ = _upstream(inputs, None, key, p0_override=1.0)
  _close(ours["out"], aligned["out"], "dechunk output with upstream's P_0 set to 1")

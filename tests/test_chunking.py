"""Dynamic chunking (hilam_jax/skill/chunking.py): fused and Pallas vs the plain reference.

The expensive reference (eager Python loops) runs once per dtype in module fixtures; one batch holds
every case: a full-length sequence, padded ones, a one-chunk sequence (only t = 0 is a boundary),
an all-boundary sequence (which overflows the capacity) and an all-padding sequence. Routing through
the real RoutingModule is also checked at the tiny lengths L = 1 and L = 2 (capacity 1 and 2).
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hilam_jax.skill import chunking as ck

B, L, D, C = 6, 9, 4, 6
LENGTHS = np.array([9, 6, 9, 4, 9, 0])
IMPLS = ("fused", "pallas")


def _mask(lengths=LENGTHS, length=L):
  return jnp.asarray(np.arange(length)[None, :] < np.asarray(lengths)[:, None])


def _crafted_routing():
  """Row 0, 1, 3: random p; row 2: one chunk; row 4: all boundaries (9 > C: overflow 3)."""
  rng = np.random.default_rng(1)
  p = rng.uniform(0.05, 0.95, size=(B, L))
  p[2] = rng.uniform(0.05, 0.45, size=L)
  p[4] = rng.uniform(0.55, 0.95, size=L)
  return ck.routing_from_prob(jnp.asarray(p, jnp.float32), _mask())


def _inputs(dtype):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(B, L, D)), dtype)
  chunk_out = jnp.asarray(rng.normal(size=(B, C, D)), dtype)
  weights = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
  return x, chunk_out, weights


def _loss_fn(impl, boundary_mask, weights):
  """Scalar of x, chunk_out, p, c; chunks feed the main-network stand-in so both paths matter."""
  mask = _mask()

  def loss(x, chunk_out, p, c):
    routing = ck.RoutingOutput(boundary_prob=p, boundary_mask=boundary_mask, confidence=c)
    chunks = ck.chunk(x, routing, C, impl=impl)
    main_out = chunk_out + jnp.tanh(chunks.chunks)
    out = ck.dechunk(main_out, routing, chunks, mask, impl=impl)
    return jnp.sum(out.astype(jnp.float32) * weights), (chunks, out)

  return loss


def _value_and_grads(impl, dtype):
  routing = _crafted_routing()
  x, chunk_out, weights = _inputs(dtype)
  loss = _loss_fn(impl, routing.boundary_mask, weights)
  value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
  if impl != "reference":           # the reference reads concrete boundaries; the others jit
    value_and_grad = jax.jit(value_and_grad)
  (value, (chunks, out)), grads = value_and_grad(
      x, chunk_out, routing.boundary_prob, routing.confidence)
  return value, chunks, out, grads


@pytest.fixture(scope="module")
def reference_f32():
  return _value_and_grads("reference", jnp.float32)


def _assert_close(a, b, tol):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol,
                             atol=tol)


def test_routing_module_properties():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, L, D)), jnp.float32)
  mask = _mask([9, 5, 1])
  module = ck.RoutingModule(D)
  params = module.init(jax.random.key(0), x, mask)
  np.testing.assert_array_equal(params["params"]["q"]["kernel"], np.eye(D))
  r = module.apply(params, x, mask)
  p, b, c = map(np.asarray, (r.boundary_prob, r.boundary_mask, r.confidence))
  np.testing.assert_array_equal(p[:, 0], 1.0)
  assert b[:, 0].all()
  assert not b[~np.asarray(mask)].any() and (p[~np.asarray(mask)] == 0).all()
  xn = np.asarray(x) / np.linalg.norm(np.asarray(x), axis=-1, keepdims=True)
  expected = np.clip(0.5 * (1 - np.sum(xn[:, :-1] * xn[:, 1:], -1)), 0, 1)  # identity q/k
  _assert_close(p[:, 1:][np.asarray(mask)[:, 1:]], expected[np.asarray(mask)[:, 1:]], 1e-6)
  np.testing.assert_array_equal(b, (p > 0.5) & np.asarray(mask))
  _assert_close(c, np.where(b, p, 1 - p), 0)
  tie = ck.routing_from_prob(jnp.array([[1.0, 0.5, 0.7]]), jnp.ones((1, 3), bool))
  np.testing.assert_array_equal(tie.boundary_mask, [[True, False, True]])


def test_chunk_indices_and_overflow(reference_f32):
  routing = _crafted_routing()
  chunks = ck.chunk(_inputs(jnp.float32)[0], routing, C)
  num_boundaries = np.asarray(routing.boundary_mask).sum(1)
  np.testing.assert_array_equal(chunks.num_chunks, np.minimum(num_boundaries, C))
  np.testing.assert_array_equal(chunks.overflow, np.maximum(num_boundaries - C, 0))
  assert chunks.num_chunks[2] == 1 and chunks.overflow[4] == L - C and chunks.num_chunks[5] == 0
  np.testing.assert_array_equal(chunks.chunk_mask, np.arange(C)[None] < num_boundaries[:, None])
  ref_chunks = reference_f32[1]
  for field in ("chunks", "chunk_mask", "num_chunks", "overflow", "boundary_index"):
    np.testing.assert_array_equal(getattr(chunks, field), getattr(ref_chunks, field))
  mask = np.asarray(_mask())
  np.testing.assert_array_equal(np.asarray(chunks.chunk_index)[mask],
                                np.asarray(ref_chunks.chunk_index)[mask])
  # Overflow: positions C..L-1 of the all-boundary row attach to chunk C - 1 and stay finite.
  out = np.asarray(reference_f32[2])
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(np.asarray(chunks.chunk_index)[4], np.minimum(np.arange(L), C - 1))
  zbar_last = out[4, C - 1] / np.asarray(ck.ste_value(routing.confidence[4, C - 1]))
  _assert_close(out[4, C:], np.broadcast_to(zbar_last, (L - C, D)), 1e-6)
  # Padding outputs 0; all-padding row is all 0.
  assert (out[~mask] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference_float32(impl, reference_f32):
  value, chunks, out, grads = _value_and_grads(impl, jnp.float32)
  ref_value, ref_chunks, ref_out, ref_grads = reference_f32
  _assert_close(chunks.chunks, ref_chunks.chunks, 1e-5)
  _assert_close(out, ref_out, 1e-5)
  _assert_close(value, ref_value, 1e-5)
  for name, g, ref_g in zip(("x", "chunk_out", "p", "c"), grads, ref_grads):
    assert float(jnp.abs(ref_g).sum()) > 0, name
    _assert_close(g, ref_g, 1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference_bfloat16(impl, reference_f32):
  value, chunks, out, grads = _value_and_grads(impl, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16 and grads[0].dtype == jnp.bfloat16
  _, ref_chunks, ref_out, ref_grads = reference_f32
  _assert_close(chunks.chunks, ref_chunks.chunks, 3e-2)
  _assert_close(out, ref_out, 1e-1)
  for g, ref_g in zip(grads, ref_grads):
    _assert_close(g, ref_g, 1e-1)


def _router_inputs(length, lengths, capacity):
  """x [B, length, D], chunk_out [B, capacity, D], mask; for length 2, rows 0/1 are steered so that
  row 0 has a boundary at t = 1 and row 1 has none (row 2 is padded after t = 0)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(len(lengths), length, D))
  if length == 2:
    x[0, 1] = -x[0, 0] + 0.1 * rng.normal(size=D)       # q_0 vs k_1 nearly opposite: p_1 ~ 1
    x[1, 1] = x[1, 0] + 0.1 * rng.normal(size=D)        # nearly parallel: p_1 ~ 0
  chunk_out = rng.normal(size=(len(lengths), capacity, D))
  return (jnp.asarray(x, jnp.float32), jnp.asarray(chunk_out, jnp.float32),
          _mask(lengths, length))


@pytest.mark.parametrize("length, lengths, capacity", [
    (7, [7, 4], C),
    (1, [1, 1, 0], 1),          # one frame: p_0 = 1 is the whole routing
    (2, [2, 2, 1, 0], 1),       # capacity 1: row 0's boundary at t = 1 overflows
    (2, [2, 2, 1, 0], 2),       # row 2: only t = 0 valid (padded)
])
def test_router_parameter_gradients(length, lengths, capacity):
  """Routing -> chunk -> dechunk through the real RoutingModule: the fused and Pallas paths equal
  the reference in value and in d loss / d (router params, x, chunk_out)."""
  x, chunk_out, mask = _router_inputs(length, lengths, capacity)
  module = ck.RoutingModule(D)
  params = jax.tree.map(lambda w: w + 0.3 * jax.random.normal(jax.random.key(4), w.shape),
                        module.init(jax.random.key(0), x, mask))

  def loss(params, x, chunk_out, impl):
    routing = module.apply(params, x, mask)
    chunks = ck.chunk(x, routing, capacity, impl=impl)
    out = ck.dechunk(chunk_out + chunks.chunks, routing, chunks, mask, impl=impl)
    return jnp.sum(jnp.sin(out)) + ck.ratio_loss(routing, mask, 3.0), (routing, chunks, out)

  grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  results = {"reference": grad_fn(params, x, chunk_out, "reference")}
  for impl in IMPLS:
    results[impl] = jax.jit(grad_fn, static_argnums=3)(params, x, chunk_out, impl)
  (ref_value, (routing, ref_chunks, ref_out)), ref_grads = results["reference"]
  b = np.asarray(routing.boundary_mask)
  np.testing.assert_array_equal(b[:, 0], np.asarray(lengths) > 0)
  if length == 2:
    np.testing.assert_array_equal(b, [[True, True], [True, False], [True, False], [False, False]])
    np.testing.assert_array_equal(ref_chunks.overflow, [1, 0, 0, 0] if capacity == 1 else 0)
  assert float(jnp.abs(ref_grads[1]).sum()) > 0 and float(jnp.abs(ref_grads[2]).sum()) > 0
  router_grad = float(jnp.abs(ref_grads[0]["params"]["k"]["kernel"]).sum())
  # With one frame p = (1) is a constant: nothing reaches the router.
  assert router_grad > 0 if length > 1 else router_grad == 0
  for impl in IMPLS:
    (value, (_, chunks, out)), grads = results[impl]
    _assert_close(value, ref_value, 1e-5)
    for field in ("chunks", "chunk_mask", "num_chunks", "overflow", "boundary_index"):
      _assert_close(getattr(chunks, field), getattr(ref_chunks, field), 1e-6)
    _assert_close(out, ref_out, 1e-5)
    jax.tree.map(lambda a, b: _assert_close(a, b, 1e-5), grads, ref_grads)


def test_routing_module_length_one():
  """L = 1: p_0 = 1 and a boundary at t = 0 on valid rows (0 / none on a padded row), as in the
  streaming step; every chunk implementation keeps that one position."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(3, 1, D)), jnp.float32)
  mask = jnp.array([[True], [True], [False]])
  module = ck.RoutingModule(D)
  params = module.init(jax.random.key(0), x, mask)
  for r in (module.apply(params, x, mask), jax.jit(module.apply)(params, x, mask)):
    assert r.boundary_prob.shape == (3, 1) and r.boundary_prob.dtype == jnp.float32
    np.testing.assert_array_equal(r.boundary_prob, [[1.0], [1.0], [0.0]])
    np.testing.assert_array_equal(r.boundary_mask, [[True], [True], [False]])
    np.testing.assert_array_equal(r.confidence, [[1.0], [1.0], [1.0]])
  chunker = ck.StreamingChunker(D, capacity=1)
  _, step = chunker.step(params, chunker.init_state(3, D), x[:, 0], mask[:, 0])
  np.testing.assert_array_equal(step.boundary_prob, r.boundary_prob[:, 0])
  np.testing.assert_array_equal(step.new_chunk, [True, True, False])
  for impl in ("reference",) + IMPLS:
    chunks = ck.chunk(x, r, 1, impl=impl)
    np.testing.assert_array_equal(chunks.num_chunks, [1, 1, 0])
    np.testing.assert_array_equal(chunks.boundary_index, [[0], [0], [1]])
    _assert_close(chunks.chunks[:2], x[:2], 0)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
      ck.chunk(x, r, 0, impl=impl)
  with pytest.raises(ValueError, match="capacity must be >= 1"):
    ck.StreamingChunker(D, capacity=0)


def test_jitted_fused_does_not_recompile():
  traces = []

  @jax.jit
  def step(x, chunk_out, p, mask):
    traces.append(1)
    routing = ck.routing_from_prob(p, mask)
    chunks = ck.chunk(x, routing, C)
    return ck.dechunk(chunk_out, routing, chunks, mask), chunks.num_chunks

  grad_traces = []

  def summed(*args):
    grad_traces.append(1)
    return jnp.sum(step(*args)[0])

  step_grad = jax.jit(jax.grad(summed, argnums=(0, 1, 2)))
  x, chunk_out, _ = _inputs(jnp.float32)
  nums = []
  for seed, lengths in enumerate(([9] * B, LENGTHS, [1, 2, 3, 4, 5, 6])):
    p = jnp.asarray(np.random.default_rng(seed).uniform(size=(B, L)), jnp.float32)
    _, num = step(x, chunk_out, p, _mask(lengths))
    step_grad(x, chunk_out, p, _mask(lengths))
    nums.append(tuple(np.asarray(num)))
  assert len(set(nums)) == 3             # the boundary patterns did differ
  assert len(traces) == 1 and len(grad_traces) == 1


def test_ratio_loss_minimum():
  for n in (2.0, 3.0, 5.0):
    grid = jnp.linspace(0.0, 1.0, 1001)
    diag = ck.ratio_loss_from_fractions(grid, grid, n)
    assert abs(float(grid[jnp.argmin(diag)]) - 1.0 / n) < 1.5e-3
    _assert_close(ck.ratio_loss_from_fractions(1 / n, 1 / n, n), 1.0, 1e-6)
    # At F = 1/N the loss does not depend on G (so p has no incentive to move).
    _assert_close(jax.grad(ck.ratio_loss_from_fractions, 1)(1 / n, 0.3, n), 0.0, 1e-6)
  routing = _crafted_routing()
  mask = _mask()
  m = np.asarray(mask)
  f = np.asarray(routing.boundary_mask)[m].mean()
  g = np.asarray(routing.boundary_prob)[m].mean()
  _assert_close(ck.ratio_loss(routing, mask, 4.0), ck.ratio_loss_from_fractions(f, g, 4.0), 1e-6)
  dp = jax.grad(lambda p: ck.ratio_loss(routing.replace(boundary_prob=p), mask, 4.0))(
      routing.boundary_prob)
  assert (np.asarray(dp)[~m] == 0).all()
  _assert_close(np.asarray(dp)[m], 4.0 / 3.0 * (3 * f - (1 - f)) / m.sum(), 1e-6)


def test_ratio_loss_per_sequence_by_hand():
  """per_sequence: each row's loss from its own F and G, averaged over rows with a valid
  position (a fully padded row counts for nothing), and its gradient."""
  routing = _crafted_routing()
  mask = np.asarray(_mask())
  per_row = []
  for b in range(mask.shape[0]):
    if mask[b].any():
      f = np.asarray(routing.boundary_mask)[b][mask[b]].mean()
      g = np.asarray(routing.boundary_prob)[b][mask[b]].mean()
      per_row.append(ck.ratio_loss_from_fractions(f, g, 4.0))
  want = np.mean(per_row)
  padded_row = np.concatenate([mask, np.zeros((1, mask.shape[1]), bool)])
  grown = routing.replace(**{k: jnp.concatenate([v, v[:1]]) for k, v in
                             dict(boundary_prob=routing.boundary_prob,
                                  boundary_mask=routing.boundary_mask,
                                  confidence=routing.confidence).items()})
  for r, m in ((routing, jnp.asarray(mask)), (grown, jnp.asarray(padded_row))):
    _assert_close(ck.ratio_loss(r, m, 4.0, per_sequence=True), want, 1e-6)
  # Rows differ in their boundary rates, so pooling and per-row averaging differ.
  assert abs(float(ck.ratio_loss(routing, jnp.asarray(mask), 4.0)) - want) > 1e-4
  dp = jax.grad(lambda p: ck.ratio_loss(routing.replace(boundary_prob=p), jnp.asarray(mask),
                                        4.0, per_sequence=True))(routing.boundary_prob)
  rows = mask.any(1)
  for b in range(mask.shape[0]):
    f = np.asarray(routing.boundary_mask)[b][mask[b]].mean() if rows[b] else 0.0
    want_b = 4.0 / 3.0 * (3 * f - (1 - f)) / max(mask[b].sum(), 1) / rows.sum()
    _assert_close(np.asarray(dp)[b][mask[b]], want_b, 1e-6)
    assert (np.asarray(dp)[b][~mask[b]] == 0).all()


@pytest.mark.parametrize("capacity, length, lengths", [
    (None, 12, [12, 8, 1]), (3, 12, [12, 8, 1]), (None, 1, [1, 1, 0]), (1, 2, [2, 2, 1])])
def test_streaming_matches_full_pass(capacity, length, lengths):
  rng = np.random.default_rng(6)
  bsz = len(lengths)
  cap = capacity or length
  x = rng.normal(size=(bsz, length, D))
  if length == 2:
    x[0, 1] = -x[0, 0]          # identity router: p_1 = 1, a second boundary (overflows C = 1)
  x = jnp.asarray(x, jnp.float32)
  mask = _mask(lengths, length)
  w = jnp.asarray(rng.normal(size=(D, D)), jnp.float32)
  main = lambda z: jnp.tanh(z @ w)      # position-wise stand-in for the main network
  chunker = ck.StreamingChunker(D, capacity=capacity)
  params = chunker.module.init(jax.random.key(0), x, mask)

  @jax.jit
  def full_pass(x):
    routing = chunker.module.apply(params, x, mask)
    chunks = ck.chunk(x, routing, cap)
    return routing, chunks, ck.dechunk(main(chunks.chunks), routing, chunks, mask)

  routing, chunks, full = full_pass(x)
  state = chunker.init_state(bsz, D)
  route_step = jax.jit(chunker.step)
  dechunk_step = jax.jit(chunker.dechunk_step)
  outs, bounds, probs = [], [], []
  for t in range(length):
    state, step = route_step(params, state, x[:, t], mask[:, t])
    zhat = main(x[:, t]) if bool(step.new_chunk.any()) else None   # None: no row starts a chunk
    state, out = dechunk_step(state, step, zhat, mask[:, t])
    outs.append(out)
    bounds.append(step.boundary)
    probs.append(step.boundary_prob)
  np.testing.assert_array_equal(np.stack(bounds, 1), routing.boundary_mask)
  _assert_close(np.stack(probs, 1), routing.boundary_prob, 1e-6)
  _assert_close(np.stack(outs, 1), full, 1e-6)
  if capacity:
    assert int(chunks.overflow.max()) > 0


def test_router_gradient_finite_at_zero_vectors():
  """Padded encoder outputs are exactly zero; the router's gradient must stay finite there."""
  module = ck.RoutingModule(4)
  x = jnp.zeros((1, 5, 4)).at[0, :2].set(1.0)
  mask = jnp.array([[True, True, True, False, False]])
  params = module.init(jax.random.key(0), x, mask)

  def loss(p, x):
    return jnp.sum(module.apply(p, x, mask).boundary_prob)

  grads = jax.grad(loss, argnums=(0, 1))(params, x)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))

"""The search Cell's scanned edges against the unrolled loop (a second path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import ops
from dnas.cell import Cell, num_edges
from dnas.mixed_op import MixedOp

STEPS, C = 3, 4


def _cell(reduction, scan_edges, remat=False):
  return Cell(
      STEPS, 2, 3, 5, C, reduction, False, ops.PRIMITIVES,
      scan_edges=scan_edges, remat=remat, rngs=nnx.Rngs(0),
  )


def _inputs():
  keys = jax.random.split(jax.random.key(1), 3)
  s0 = jax.random.normal(keys[0], (2, 7, 7, 3))
  s1 = jax.random.normal(keys[1], (2, 7, 7, 5))
  weights = jax.nn.softmax(
      jax.random.normal(keys[2], (num_edges(STEPS), len(ops.PRIMITIVES))), -1
  )
  return s0, s1, weights


def _per_edge(graphdef, params, rest):
  """A cell's parameter-shaped and other leaves, preprocessing first, then
  edge by edge: the same list whether the cell stores its edges stacked
  (scanned) or one by one (unrolled)."""
  cell = nnx.merge(graphdef, params, rest, copy=True)
  parts = [cell.preprocess0, cell.preprocess1]
  parts += [cell.edge(e) for e in range(num_edges(cell.steps))]
  return [jax.tree.leaves(nnx.split(m, nnx.Param, ...)[1:]) for m in parts]


def _run(cell, s0, s1, weights):
  """Output, gradients w.r.t. weights (per edge, with the updated BN stats)
  and mixing weights."""
  graphdef, params, rest = nnx.split(cell, nnx.Param, ...)

  def loss(params, weights):
    model = nnx.merge(graphdef, params, rest, copy=True)
    y = model(s0, s1, weights)
    return jnp.sum(y * jnp.sin(jnp.arange(y.size).reshape(y.shape))), (
        y, nnx.split(model, nnx.Param, ...)[2]
    )

  (_, (y, stats)), (grads, weight_grads) = jax.value_and_grad(
      loss, (0, 1), has_aux=True
  )(params, weights)
  return y, _per_edge(graphdef, grads, stats), weight_grads


@pytest.mark.parametrize("remat", [False, True], ids=["keep", "remat"])
@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduce"])
def test_scanned_edges_match_the_unrolled_cell(reduction, remat):
  s0, s1, weights = _inputs()
  got = _run(_cell(reduction, True, remat), s0, s1, weights)
  want = _run(_cell(reduction, False), s0, s1, weights)
  size = 4 if reduction else 7
  assert got[0].shape == (2, size, size, 2 * C)
  assert len(jax.tree.leaves(got)) == len(jax.tree.leaves(want))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_scanned_cell_compiles_one_mixed_op_per_group():
  s0, s1, weights = _inputs()
  for reduction, scans in ((False, 1), (True, 2)):
    graphdef, state = nnx.split(_cell(reduction, True))
    run = lambda w: nnx.merge(graphdef, state, copy=True)(s0, s1, w)  # noqa: E731
    jaxpr = jax.make_jaxpr(run)(weights)
    found = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(found) == scans
    assert sum(e.params["length"] for e in found) == num_edges(STEPS)


def test_remat_keeps_less_for_the_backward():
  """Rematerialised edges need a fraction of the temporary memory."""
  s0, s1, weights = _inputs()
  s0, s1 = jnp.tile(s0, (8, 1, 1, 1)), jnp.tile(s1, (8, 1, 1, 1))

  def temp_bytes(remat):
    graphdef, params, rest = nnx.split(_cell(False, True, remat), nnx.Param, ...)

    def loss(params):
      y = nnx.merge(graphdef, params, rest, copy=True)(s0, s1, weights)
      return jnp.sum(y * y)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(True) < 0.5 * temp_bytes(False)


def test_second_order_through_the_scan_matches_the_unrolled_cell():
  """The exact hypergradient differentiates a gradient through the scan."""
  s0, s1, weights = _inputs()

  def hyper(scan_edges):
    cell = _cell(True, scan_edges, remat=scan_edges)
    graphdef, params, rest = nnx.split(cell, nnx.Param, ...)

    def inner(params, weights):
      y = nnx.merge(graphdef, params, rest, copy=True)(s0, s1, weights)
      return jnp.sum(jnp.tanh(y))

    def outer(weights):
      grads = jax.grad(inner)(params, weights)
      stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
      return inner(stepped, weights)

    return jax.grad(outer)(weights)

  got, want = hyper(True), hyper(False)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_edges_of_another_structure_fall_back_to_the_unrolled_loop():
  s0, s1, weights = _inputs()
  # One edge with its own (smaller) candidate set: not stackable.
  per_edge = [ops.PRIMITIVES] * num_edges(STEPS)
  per_edge[3] = ops.PRIMITIVES[:4]
  cells = [
      Cell(STEPS, 2, 3, 5, C, False, False, per_edge, scan_edges=scan,
           rngs=nnx.Rngs(0))
      for scan in (True, False)
  ]
  assert not any(stacked for _, stacked in cells[0].edge_layout)
  assert isinstance(cells[0].edge(3), MixedOp)
  assert cells[0].edge(3).primitives == tuple(ops.PRIMITIVES[:4])
  got, want = (_run(cell, s0, s1, weights) for cell in cells)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_scanned_cell_stores_each_group_stacked():
  """A scanned cell keeps one MixedOp per group whose variables carry the
  edge axis (no stacking per step), initialised as the unrolled cell."""
  for reduction, sizes in ((False, [num_edges(STEPS)]), (True, [2 * STEPS, 3])):
    scanned, unrolled = _cell(reduction, True), _cell(reduction, False)
    assert [len(ids) for ids, _ in scanned.edge_layout] == sizes
    assert all(stacked for _, stacked in scanned.edge_layout)
    assert len(unrolled.edge_groups) == num_edges(STEPS)
    ids, _ = scanned.edge_layout[-1]
    kernel = scanned.edge_groups[-1].candidates[4].depthwise1.kernel.get_value()
    assert kernel.shape == (len(ids), 3, 3, 1, C)
    for e in range(num_edges(STEPS)):
      for a, b in zip(jax.tree.leaves(nnx.state(scanned.edge(e))),
                      jax.tree.leaves(nnx.state(unrolled.edge(e)))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError, match="out of range"):
      scanned.edge(num_edges(STEPS))


def test_per_edge_primitives_must_cover_every_edge():
  with pytest.raises(ValueError, match="one list of op names per edge"):
    Cell(STEPS, 2, 3, 5, C, False, False, [ops.PRIMITIVES] * 2, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduce"])
def test_scanned_sampled_child_matches_the_unrolled_one(reduction):
  """ENAS's path: only the sampled candidates run, behind conditions."""
  s0, s1, _ = _inputs()
  op_ids = [i for i, p in enumerate(ops.PRIMITIVES) if p != "none"]
  # Node i: two inputs in 0..i+1 and two ops; node 2 picks one (input, op) twice.
  arch = jnp.array([[0, 1, 3, 5], [2, 0, 0, 6], [3, 3, 4, 4]], jnp.int32)

  def run(scan_edges, remat):
    cell = _cell(reduction, scan_edges, remat)
    graphdef, params, rest = nnx.split(cell, nnx.Param, ...)

    def loss(params, arch):
      model = nnx.merge(graphdef, params, rest, copy=True)
      y = model.sampled(s0, s1, arch, op_ids)
      return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), (
          y, nnx.split(model, nnx.Param, ...)[2]
      )

    # One compiled program per variant (half the time of running it op by
    # op, on a cold cache); the architecture is an argument, so its
    # conditions stay in the program instead of being folded away.
    (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, arch)
    return y, _per_edge(graphdef, grads, stats)

  want = run(False, False)
  for remat in (False, True):
    got = run(True, remat)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduce"])
def test_cells_of_one_structure_share_one_traced_body(reduction):
  """Two cells with equal structure and shapes trace their edge scan once
  (the same body jaxpr) and still compute each with its own weights."""
  s0, s1, weights = _inputs()
  cells = [
      Cell(STEPS, 2, 3, 5, C, reduction, False, ops.PRIMITIVES,
           scan_edges=True, remat=True, rngs=nnx.Rngs(seed))
      for seed in (0, 1)
  ]
  graphdef, state = nnx.split(cells)

  def both(state):
    a, b = nnx.merge(graphdef, state, copy=True)
    return a(s0, s1, weights), b(s0, s1, weights)

  scans = [e for e in jax.make_jaxpr(both)(state).jaxpr.eqns if e.primitive.name == "scan"]
  assert len(scans) == (4 if reduction else 2)
  half = len(scans) // 2
  for first, second in zip(scans[:half], scans[half:]):
    assert first.params["jaxpr"] is second.params["jaxpr"]
  got = jax.jit(both)(state)
  for cell, y in zip(cells, got):
    alone = _run(cell, s0, s1, weights)[0]
    np.testing.assert_allclose(y, alone, rtol=1e-4, atol=1e-5)
  assert not np.allclose(got[0], got[1])

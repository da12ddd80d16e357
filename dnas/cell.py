"""The DARTS search ``Cell``: a DAG of mixed operations."""

from __future__ import annotations

from collections.abc import Sequence
import functools

from flax import nnx
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from dnas import ops
from dnas.mixed_op import MixedOp

__all__ = ["Cell", "num_edges"]


# What a rematerialised edge keeps for its backward pass: its input (named
# in the scanned body; the unrolled edge keeps it as the checkpoint's
# argument) and its BatchNorms' batch statistics.
_EDGE_INPUT = "edge_input"
_REMAT_POLICY = jax.checkpoint_policies.save_only_these_names(
    _EDGE_INPUT, ops.BATCHNORM_STATS
)


def num_edges(steps: int) -> int:
  """Edges of a cell with ``steps`` intermediate nodes: 2 + 3 + ... (14 for 4)."""
  return sum(2 + i for i in range(steps))


class Cell(nnx.Module):
  """A search cell: two inputs, ``steps`` intermediate nodes, every edge mixed.

  Node ``i`` sums one ``MixedOp`` per earlier state (the two cell inputs and
  nodes ``0..i-1``), so a 4-node cell has 14 edges, ordered node by node and,
  within a node, by input. The output concatenates the last ``multiplier``
  nodes along channels. In a reduction cell the edges leaving the two inputs
  have stride 2.

  With ``scan_edges`` (the default) the edges that share an input shape and
  a structure run as one ``lax.scan`` over their stacked weights: all 14
  edges of a normal cell, and the 8 stride-2 plus the 6 stride-1 edges of a
  reduction cell. The carry holds the cell's states, each edge reads its
  input state and adds its output into its node, in the same order as the
  unrolled loop, so the function is the same; XLA compiles one ``MixedOp``
  per group instead of one per edge, which makes the search step's compile
  several times shorter. Edges of differing structure (a space with
  per-edge primitives) fall back to the unrolled loop.

  Storage follows the schedule: a scanned group is stored as one
  ``MixedOp`` whose variables carry a leading edge axis (``edge_groups``,
  described by ``edge_layout``), so a training step neither stacks the
  weights for the scan nor splits its gradients back per edge, and the
  optimiser updates a dozen arrays per group instead of a dozen per edge
  (about 1,400 arrays for the DARTS supernet became about 200, which took
  the first-order step's compile from 76 to 43 s). The weights are
  initialised edge by edge as in the unrolled cell, so both layouts start
  from the same numbers; ``edge(e)`` returns one edge's ``MixedOp`` in
  either layout. A checkpoint holds the layout it was written with.

  Args:
    steps: intermediate nodes (4 in DARTS).
    multiplier: nodes concatenated into the output (4 in DARTS).
    C_prev_prev: channels of the input from two cells back.
    C_prev: channels of the input from the previous cell.
    C: channels of every node.
    reduction: halve the spatial size.
    reduction_prev: the previous cell halved it, so the older input is reduced
      with a ``FactorizedReduce``.
    primitives: candidate op names, shared by every edge; or one sequence
      of names per edge (``num_edges(steps)`` of them).
    scan_edges: run edges of one shape as a ``lax.scan`` (see above); False
      unrolls every edge into the program.
    remat: rematerialise each edge: the backward pass keeps only the edge's
      input and its BatchNorms' batch statistics (``"batchnorm_stats"``, C
      floats each: the recomputation skips two reductions over the batch
      per BatchNorm) and recomputes its candidates' forward, instead of
      keeping every intermediate of every candidate (about 40 activations
      per edge in the DARTS space). At batch 64 on CPU this cut a cell's
      temporary memory 10x and made its step faster (less memory traffic).
      On XLA:CPU it takes effect in the scanned form only: unrolled, the
      compiler merges the recomputation back into the forward pass.
    rngs: parameter initialisation keys.

  Example:
    >>> cell = Cell(4, 4, 48, 48, 16, False, False, ops.PRIMITIVES, rngs=nnx.Rngs(0))
    >>> out = cell(s0, s1, jax.nn.softmax(alphas_normal))  # (N, H, W, 64)
  """

  def __init__(
      self,
      steps: int,
      multiplier: int,
      C_prev_prev: int,
      C_prev: int,
      C: int,
      reduction: bool,
      reduction_prev: bool,
      primitives: Sequence[str],
      *,
      scan_edges: bool = True,
      remat: bool = True,
      rngs: nnx.Rngs,
  ):
    self.steps = steps
    self.scan_edges = scan_edges
    self.remat = remat
    self.multiplier = multiplier
    self.reduction = reduction
    if reduction_prev:
      self.preprocess0 = ops.FactorizedReduce(C_prev_prev, C, False, rngs=rngs)
    else:
      self.preprocess0 = ops.ReLUConvBN(C_prev_prev, C, 1, 1, 0, False, rngs=rngs)
    self.preprocess1 = ops.ReLUConvBN(C_prev, C, 1, 1, 0, False, rngs=rngs)
    per_edge = _per_edge_primitives(primitives, num_edges(steps))
    edges = []
    for e, j, _ in _edge_list(steps):
      stride = 2 if reduction and j < 2 else 1
      edges.append(MixedOp(C, stride, per_edge[e], rngs=rngs))
    # Storage: each scanned group's edges as one MixedOp whose variables
    # carry a leading edge axis (built from the per-edge ops, so the
    # initialisation does not depend on the layout); every other edge as
    # its own MixedOp.
    groups = (
        _shape_groups(steps, reduction)
        if scan_edges
        else [[edge] for edge in _edge_list(steps)]
    )
    stored, layout = [], []
    for group in groups:
      ids = tuple(e for e, _, _ in group)
      parts = [nnx.split(edges[e]) for e in ids]
      if len(ids) > 1 and all(p[0] == parts[0][0] for p in parts[1:]):
        stack = lambda *xs: jnp.stack(xs)  # noqa: E731
        state = jax.tree.map(stack, *[p[1] for p in parts])
        stored.append(nnx.merge(parts[0][0], state))
        layout.append((ids, True))
      else:
        stored.extend(edges[e] for e in ids)
        layout.extend(((e,), False) for e in ids)
    self.edge_groups = nnx.List(stored)
    self.edge_layout = tuple(layout)

  def edge(self, e: int) -> MixedOp:
    """Edge ``e``'s ``MixedOp`` (edges ordered node by node, then by input).

    An edge stored in a scanned group is returned as a copy sliced out of
    the group's stacked variables: read it, do not update it.
    """
    for module, (ids, stacked) in zip(self.edge_groups, self.edge_layout):
      if e in ids:
        if not stacked:
          return module
        graphdef, state = nnx.split(module)
        k = ids.index(e)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[k], state))
    raise IndexError(f"edge {e} out of range: this cell has {num_edges(self.steps)}")

  def _stack(self, ids):
    """The stored MixedOp stacking edges ``ids``, or None if they are not
    stored as one stack."""
    for module, (stored, stacked) in zip(self.edge_groups, self.edge_layout):
      if stacked and stored == ids:
        return module
    return None

  def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array) -> jax.Array:
    """Runs the cell; ``weights`` has shape (num_edges(steps), num_ops),
    with per-edge primitives a row per edge padded to the widest (edge
    ``e`` reads the first ``len(primitives[e])`` entries of its row)."""
    return self._run([self.preprocess0(s0), self.preprocess1(s1)], weights, _mixed)

  def _run(self, states, extra, apply):
    """The cell's DAG: node ``i`` sums ``apply(edge, h_j, extra[e], j, i)``
    over its incoming edges ``e`` (from state ``j``); ``extra`` is a per-edge
    array or None. Scanned or unrolled as ``scan_edges`` says."""
    if self.scan_edges:
      return self._scanned(states, extra, apply)
    for e, j, i in _edge_list(self.steps):
      term = self._edge(e, states[j], lambda op, x: apply(op, x, _row(extra, e), j, i))
      if len(states) == i + 2:
        states.append(term)
      else:
        states[i + 2] = states[i + 2] + term
    return jnp.concatenate(states[-self.multiplier :], axis=-1)

  def _edge(self, e, x, fn):
    """``fn(edge e, x)``; with ``remat`` only ``x`` is kept for the backward."""
    edge = self.edge(e)
    if not self.remat:
      return fn(edge, x)
    graphdef, params, rest = nnx.split(edge, nnx.Param, ...)

    def run(params, rest, x):
      op = nnx.merge(graphdef, params, rest)
      return fn(op, x), nnx.state(op, nnx.Not(nnx.Param))

    y, new_rest = jax.checkpoint(run, policy=_REMAT_POLICY)(params, rest, x)
    nnx.update(edge, new_rest)
    return y

  def _scanned(self, inputs, extra, apply):
    """The cell with each group of same-shaped edges run as one scan."""
    x = inputs[0]
    if self.reduction:
      # Stride-2 edges read the inputs, stride-1 edges the nodes: two groups.
      first, rest = _shape_groups(self.steps, True)
      n, h, w, c = x.shape
      nodes = jnp.zeros((self.steps, n, (h + 1) // 2, (w + 1) // 2, c), x.dtype)
      source = jnp.stack(inputs)
      first = [(e, j, i, j, i) for e, j, i in first]
      nodes = self._scan_group(first, nodes, extra, apply, source=source)
      rest = [(e, j - 2, i, j, i) for e, j, i in rest]
      nodes = self._scan_group(rest, nodes, extra, apply)
    else:
      zeros = jnp.zeros((self.steps,) + x.shape, x.dtype)
      states = jnp.concatenate([jnp.stack(inputs), zeros])
      (edges,) = _shape_groups(self.steps, False)
      moved = [(e, j, i + 2, j, i) for e, j, i in edges]
      nodes = self._scan_group(moved, states, extra, apply)[2:]
    return jnp.concatenate(list(nodes[-self.multiplier :]), axis=-1)

  def _scan_group(self, group, states, extra, apply, source=None):
    """Adds ``apply(edge, read[src], ...)`` into ``states[dst]`` for each edge.

    ``group`` lists ``(edge, src, dst, j, i)`` (``j``, ``i``: the edge's
    state and node in the cell) in an order where every source is complete
    before it is read; ``source`` (if given) holds the states the edges
    read, otherwise they read ``states`` itself.
    """
    if not group:
      return states
    index = np.asarray([g[0] for g in group])
    stack = self._stack(tuple(int(e) for e in index))
    if stack is None:
      # Unlike edges (or nothing to share): run them one by one.
      for e, src, dst, j, i in group:
        x = (states if source is None else source)[src]
        fn = lambda op, x, e=e, j=j, i=i: apply(op, x, _row(extra, e), j, i)  # noqa: E731
        states = states.at[dst].add(self._edge(e, x, fn))
      return states
    graphdef, params, rest = nnx.split(stack, nnx.Param, ...)
    src, dst, j, i = (jnp.asarray([g[k] for g in group], jnp.int32) for k in range(1, 5))
    rows = None if extra is None else extra[index]

    body = _scan_body(graphdef, apply, self.remat, source is not None)
    xs = (params, rest, rows, src, dst, j, i)
    if source is None:
      states, new_rest = jax.lax.scan(body, states, xs)
    else:
      (states, _), new_rest = jax.lax.scan(body, (states, source), xs)
    nnx.update(stack, new_rest)
    return states

  def sampled(
      self, s0: jax.Array, s1: jax.Array, arch: jax.Array, op_ids: Sequence[int]
  ) -> jax.Array:
    """Runs only the ops of one discrete architecture (ENAS's shared weights).

    Node ``i`` sums two terms, each one candidate of one incoming edge:
    ``arch[i] = (input_1, input_2, op_1, op_2)``, inputs in ``0 .. i + 1``
    and ops indexing ``op_ids`` (positions in this cell's primitives, so a
    space can leave ``none`` out). Every candidate sits behind its own
    ``nnx.cond`` on the traced ``arch``: one compiled program serves every
    architecture, only the chosen candidates run (and update their
    BatchNorm statistics), and the backward pass of each condition touches
    only its own candidate's weights, which keeps the program as small as
    the DARTS cell's. With ``scan_edges`` the edges run in the same scans as
    ``__call__`` (the conditions inside the scanned body), so a 4-node
    child compiles in about 1.5 minutes on two CPU cores instead of more
    than five.

    Args:
      s0, s1: the cell's inputs.
      arch: int array of shape (steps, 4).
      op_ids: candidate positions the op indices refer to.

    Returns:
      The cell output, as ``__call__``.
    """
    def apply(edge, h, _, j, i):
      n, height, width, channels = h.shape
      if edge.stride == 2:
        height, width = (height + 1) // 2, (width + 1) // 2
      zeros = jnp.zeros((n, height, width, channels), h.dtype)
      out = None
      for o, candidate in enumerate(op_ids):
        # How many of the node's two slots chose (input j, op o): 0, 1 or 2.
        count = sum(
            ((arch[i, slot] == j) & (arch[i, 2 + slot] == o)).astype(h.dtype)
            for slot in range(2)
        )
        term = nnx.cond(
            count > 0,
            _run_scaled,
            lambda op, x, c, zeros=zeros: zeros,
            edge.candidates[candidate],
            h,
            count,
        )
        out = term if out is None else out + term
      return out

    return self._run([self.preprocess0(s0), self.preprocess1(s1)], None, apply)


def _scan_body(graphdef, apply, remat, with_source):
  """The scanned edge: reads its input state, adds ``apply``'s output into
  its destination node. The carry is ``states``, or ``(states, source)``
  when the edges read a separate stack.

  Built once per (edge structure, ``apply``, ``remat``) for the module-level
  ``apply`` functions: ``lax.scan`` caches its traced body by the function's
  identity, so the cells of one stage (equal edge structure and shapes), and
  the alpha and weight passes of a search step, trace and differentiate one
  body instead of one per cell and pass.
  """
  if apply is _mixed:
    return _cached_scan_body(graphdef, apply, remat, with_source)
  return _cached_scan_body.__wrapped__(graphdef, apply, remat, with_source)


@functools.lru_cache(maxsize=64)
def _cached_scan_body(graphdef, apply, remat, with_source):
  def body(carry, xs):
    states, source = carry if with_source else (carry, carry)
    params, rest, row, src, dst, j, i = xs
    # This edge's weights and weight row, sliced from the group's stacks, each
    # into its own small buffer. Left as slices, XLA:CPU fuses the
    # dynamic-slice into every consumer, and LLVM then emits those loops
    # (the depthwise taps among them) as scalar code: the first-order search
    # step ran 17% slower.
    params, row = jax.tree.map(ops.materialize, (params, row))
    op = nnx.merge(graphdef, params, rest)
    # The edge's input too: one copy, after which its readers (the
    # candidates' ReLU-and-pad, the pools, the skip) vectorise.
    x = ops.materialize(jax.lax.dynamic_index_in_dim(source, src, keepdims=False))
    x = checkpoint_name(x, _EDGE_INPUT)
    y = apply(op, x, row, j, i)
    node = jax.lax.dynamic_index_in_dim(states, dst, keepdims=False) + y
    states = jax.lax.dynamic_update_index_in_dim(states, node, dst, 0)
    carry = (states, source) if with_source else states
    return carry, nnx.state(op, nnx.Not(nnx.Param))

  if remat:
    body = jax.checkpoint(body, policy=_REMAT_POLICY, prevent_cse=False)
  return body


def _edge_list(steps):
  """(edge index, source state, destination node) in evaluation order."""
  edges, offset = [], 0
  for i in range(steps):
    for j in range(2 + i):
      edges.append((offset + j, j, i))
    offset += 2 + i
  return edges


def _shape_groups(steps, reduction):
  """The edges (as ``_edge_list``) split into the groups a scanned cell runs
  as one scan each: all edges of a normal cell; the stride-2 edges leaving
  a reduction cell's inputs, then its stride-1 edges between nodes."""
  edges = _edge_list(steps)
  if reduction:
    return [[t for t in edges if t[1] < 2], [t for t in edges if t[1] >= 2]]
  return [edges]


def _per_edge_primitives(primitives, count):
  """One tuple of candidate names per edge, from a shared sequence of names
  or from one sequence per edge."""
  if all(isinstance(p, str) for p in primitives):
    return [tuple(primitives)] * count
  per_edge = [tuple(p) for p in primitives]
  if len(per_edge) != count:
    raise ValueError(
        f"per-edge primitives: got {len(per_edge)} lists for {count} edges;"
        " give one list of op names per edge, or one list shared by all"
    )
  return per_edge


def _mixed(edge, x, weights, j, i):
  """The DARTS edge: every candidate, mixed by its weight row."""
  del j, i
  return edge(x, weights)


def _row(extra, e):
  return None if extra is None else extra[e]


def _run_scaled(op, x, count):
  return count * op(x)

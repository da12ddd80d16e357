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
  several times shorter. Edges of differing structure (a user's space with
  per-edge primitives) fall back to the unrolled loop.

  Args:
    steps: intermediate nodes (4 in DARTS).
    multiplier: nodes concatenated into the output (4 in DARTS).
    C_prev_prev: channels of the input from two cells back.
    C_prev: channels of the input from the previous cell.
    C: channels of every node.
    reduction: halve the spatial size.
    reduction_prev: the previous cell halved it, so the older input is reduced
      with a ``FactorizedReduce``.
    primitives: candidate op names of every edge.
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
    edges = []
    for i in range(steps):
      for j in range(2 + i):
        stride = 2 if reduction and j < 2 else 1
        edges.append(MixedOp(C, stride, primitives, rngs=rngs))
    self.edges = nnx.List(edges)

  def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array) -> jax.Array:
    """Runs the cell; ``weights`` has shape (num_edges(steps), num_ops)."""
    return self._run([self.preprocess0(s0), self.preprocess1(s1)], weights, _mixed)

  def _run(self, states, extra, apply):
    """The cell's DAG: node ``i`` sums ``apply(edge, h_j, extra[e], j, i)``
    over its incoming edges ``e`` (from state ``j``); ``extra`` is a per-edge
    array or None. Scanned or unrolled as ``scan_edges`` says."""
    if self.scan_edges:
      return self._scanned(states, extra, apply)
    for e, j, i in self._edge_list():
      term = self._edge(e, states[j], lambda op, x: apply(op, x, _row(extra, e), j, i))
      if len(states) == i + 2:
        states.append(term)
      else:
        states[i + 2] = states[i + 2] + term
    return jnp.concatenate(states[-self.multiplier :], axis=-1)

  def _edge(self, e, x, fn):
    """``fn(edge e, x)``; with ``remat`` only ``x`` is kept for the backward."""
    if not self.remat:
      return fn(self.edges[e], x)
    graphdef, params, rest = nnx.split(self.edges[e], nnx.Param, ...)

    def run(params, rest, x):
      op = nnx.merge(graphdef, params, rest)
      return fn(op, x), nnx.state(op, nnx.Not(nnx.Param))

    y, new_rest = jax.checkpoint(run, policy=_REMAT_POLICY)(params, rest, x)
    nnx.update(self.edges[e], new_rest)
    return y

  def _edge_list(self):
    """(edge index, source state, destination node) in evaluation order."""
    edges, offset = [], 0
    for i in range(self.steps):
      for j in range(2 + i):
        edges.append((offset + j, j, i))
      offset += 2 + i
    return edges

  def _scanned(self, inputs, extra, apply):
    """The cell with each group of same-shaped edges run as one scan."""
    edges = self._edge_list()
    x = inputs[0]
    if self.reduction:
      # Stride-2 edges read the inputs, stride-1 edges the nodes: two groups.
      n, h, w, c = x.shape
      nodes = jnp.zeros((self.steps, n, (h + 1) // 2, (w + 1) // 2, c), x.dtype)
      source = jnp.stack(inputs)
      first = [(e, j, i, j, i) for e, j, i in edges if j < 2]
      nodes = self._scan_group(first, nodes, extra, apply, source=source)
      rest = [(e, j - 2, i, j, i) for e, j, i in edges if j >= 2]
      nodes = self._scan_group(rest, nodes, extra, apply)
    else:
      zeros = jnp.zeros((self.steps,) + x.shape, x.dtype)
      states = jnp.concatenate([jnp.stack(inputs), zeros])
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
    modules = [self.edges[g[0]] for g in group]
    parts = [nnx.split(m, nnx.Param, ...) for m in modules]
    graphdef = parts[0][0]
    if len(group) == 1 or any(p[0] != graphdef for p in parts[1:]):
      # Unlike edges (or nothing to share): run them one by one.
      for e, src, dst, j, i in group:
        x = (states if source is None else source)[src]
        fn = lambda op, x, e=e, j=j, i=i: apply(op, x, _row(extra, e), j, i)  # noqa: E731
        states = states.at[dst].add(self._edge(e, x, fn))
      return states
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    params = jax.tree.map(stack, *[p[1] for p in parts])
    rest = jax.tree.map(stack, *[p[2] for p in parts])
    index = np.asarray([g[0] for g in group])
    src, dst, j, i = (jnp.asarray([g[k] for g in group], jnp.int32) for k in range(1, 5))
    rows = None if extra is None else extra[index]

    body = _scan_body(graphdef, apply, self.remat, source is not None)
    xs = (params, rest, rows, src, dst, j, i)
    if source is None:
      states, new_rest = jax.lax.scan(body, states, xs)
    else:
      (states, _), new_rest = jax.lax.scan(body, (states, source), xs)
    for k, m in enumerate(modules):
      nnx.update(m, jax.tree.map(lambda a, k=k: a[k], new_rest))
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
    op = nnx.merge(graphdef, params, rest)
    x = jax.lax.dynamic_index_in_dim(source, src, keepdims=False)
    x = checkpoint_name(x, _EDGE_INPUT)
    y = apply(op, x, row, j, i)
    node = jax.lax.dynamic_index_in_dim(states, dst, keepdims=False) + y
    states = jax.lax.dynamic_update_index_in_dim(states, node, dst, 0)
    carry = (states, source) if with_source else states
    return carry, nnx.state(op, nnx.Not(nnx.Param))

  if remat:
    body = jax.checkpoint(body, policy=_REMAT_POLICY, prevent_cse=False)
  return body


def _mixed(edge, x, weights, j, i):
  """The DARTS edge: every candidate, mixed by its weight row."""
  del j, i
  return edge(x, weights)


def _row(extra, e):
  return None if extra is None else extra[e]


def _run_scaled(op, x, count):
  return count * op(x)

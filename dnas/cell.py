"""The DARTS search ``Cell``: a DAG of mixed operations."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from dnas import ops
from dnas.mixed_op import MixedOp

__all__ = ["Cell", "num_edges"]


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
      rngs: nnx.Rngs,
  ):
    self.steps = steps
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
    states = [self.preprocess0(s0), self.preprocess1(s1)]
    offset = 0
    for _ in range(self.steps):
      node = None
      for j, h in enumerate(states):
        term = self.edges[offset + j](h, weights[offset + j])
        node = term if node is None else node + term
      offset += len(states)
      states.append(node)
    return jnp.concatenate(states[-self.multiplier :], axis=-1)

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
    the DARTS cell's.

    Args:
      s0, s1: the cell's inputs.
      arch: int array of shape (steps, 4).
      op_ids: candidate positions the op indices refer to.

    Returns:
      The cell output, as ``__call__``.
    """
    states = [self.preprocess0(s0), self.preprocess1(s1)]
    offset = 0
    for i in range(self.steps):
      node = None
      for j, h in enumerate(states):
        edge = self.edges[offset + j]
        n, height, width, channels = h.shape
        if edge.stride == 2:
          height, width = (height + 1) // 2, (width + 1) // 2
        zeros = jnp.zeros((n, height, width, channels), h.dtype)
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
          node = term if node is None else node + term
      offset += len(states)
      states.append(node)
    return jnp.concatenate(states[-self.multiplier :], axis=-1)


def _run_scaled(op, x, count):
  return count * op(x)

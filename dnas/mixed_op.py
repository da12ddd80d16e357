"""MixedOp: the candidate operations of one edge, mixed by weights."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx
import jax

from dnas import ops

__all__ = ["MixedOp"]


class MixedOp(nnx.Module):
  """A weighted sum of candidate operations, DARTS eq. 2.

  ``MixedOp`` owns the candidate ops but not the alphas: the supernet relaxes
  its alphas (softmax, Gumbel, ...) and passes each edge its weight row, so
  the weighting function is pluggable without touching this class. Pooling
  candidates are followed by an affine-free BatchNorm as in the DARTS search
  cell. The ``none`` op contributes exactly zero and is not computed.

  Args:
    C: channels in and out.
    stride: 1, or 2 on the edges of a reduction cell that leave its inputs.
    primitives: candidate op names, looked up in ``ops.OPS``; the order is the
      order of the weight row.
    rngs: parameter initialisation keys.

  Example:
    >>> op = MixedOp(16, 1, ops.PRIMITIVES, rngs=nnx.Rngs(0))
    >>> y = op(x, jax.nn.softmax(alpha_row))
  """

  def __init__(
      self, C: int, stride: int, primitives: Sequence[str], *, rngs: nnx.Rngs
  ):
    self.primitives = tuple(primitives)
    self.stride = stride
    candidates = []
    for name in self.primitives:
      if name == "none":
        candidates.append(ops.Zero(stride))
        continue
      op = ops.OPS[name](C, stride, False, rngs=rngs)
      if "pool" in name:
        op = ops.Sequential(op, ops.BatchNorm(C, affine=False, rngs=rngs))
      candidates.append(op)
    self.candidates = nnx.List(candidates)

  def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    """Mixes the candidates' outputs; ``weights`` has shape (len(primitives),)."""
    out = None
    for index, (name, op) in enumerate(zip(self.primitives, self.candidates)):
      if name == "none":
        continue
      term = weights[index].astype(x.dtype) * op(x)
      out = term if out is None else out + term
    if out is None:
      return self.candidates[0](x)
    return out

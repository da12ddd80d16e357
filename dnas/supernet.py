"""The DARTS search network: stem, search cells and the alphas they share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from dnas import ops
from dnas import relaxations
from dnas.cell import Cell, num_edges
from dnas.variables import ArchParam

__all__ = ["Supernet", "split", "merge"]


class Supernet(nnx.Module):
  """The DARTS search network (``Network`` in the reference ``model_search.py``).

  A 3x3 conv stem to ``stem_multiplier * C`` channels, ``layers`` search cells
  with reductions at ``layers // 3`` and ``2 * layers // 3`` (channels doubled
  at each), global average pooling and a linear classifier. All normal cells
  share ``alphas_normal`` and all reduction cells share ``alphas_reduce``,
  each of shape (num_edges(steps), len(primitives)) and of type ``ArchParam``.

  Args:
    in_channels: image channels (3 for CIFAR, 1 for digits).
    num_classes: classifier outputs.
    C: channels of the first cell's nodes (16 in DARTS).
    layers: number of cells (8 in DARTS).
    steps: intermediate nodes per cell (4).
    multiplier: nodes concatenated into a cell's output (4).
    stem_multiplier: stem channels are ``stem_multiplier * C`` (3).
    primitives: candidate op names (``ops.PRIMITIVES``).
    alpha_init_scale: alphas start as ``scale * N(0, 1)`` (DARTS code: 1e-3);
      0 gives the paper's stated zeros.
    relaxation: name in ``relaxations.RELAXATIONS`` or a callable.
    scan_edges: run each cell's same-shaped edges as one ``lax.scan`` over
      their weights, stored stacked (``Cell``): same function and the same
      initial weights, a several times shorter compile. The state's layout
      (and so a checkpoint's) follows this setting.
    remat: keep only each edge's input (and its BatchNorm statistics) for the
      backward pass and recompute the edge's candidates there (``Cell``):
      same gradients, a fraction of the memory.
    rngs: keys; ``rngs.params`` initialises weights and alphas.

  Example:
    >>> net = Supernet(in_channels=3, num_classes=10, rngs=nnx.Rngs(0))
    >>> logits = net(images)  # images: (N, 32, 32, 3)
  """

  def __init__(
      self,
      *,
      in_channels: int = 3,
      num_classes: int = 10,
      C: int = 16,
      layers: int = 8,
      steps: int = 4,
      multiplier: int = 4,
      stem_multiplier: int = 3,
      primitives: Sequence[str] = tuple(ops.PRIMITIVES),
      alpha_init_scale: float = 1e-3,
      relaxation: Any = "softmax",
      scan_edges: bool = True,
      remat: bool = True,
      rngs: nnx.Rngs,
  ):
    unknown = [p for p in primitives if p not in ops.OPS]
    if unknown:
      raise ValueError(
          f"unknown primitives {unknown}; registered ops: {', '.join(ops.OPS)}"
      )
    if layers < 1 or steps < 1 or multiplier < 1 or multiplier > steps:
      raise ValueError(
          f"need layers >= 1 and 1 <= multiplier <= steps, got layers={layers},"
          f" steps={steps}, multiplier={multiplier}"
      )
    self.primitives = tuple(primitives)
    self.steps = steps
    self.multiplier = multiplier
    self.layers = layers
    self.relaxation = relaxations.get(relaxation)
    C_curr = stem_multiplier * C
    self.stem_conv = ops.Conv(in_channels, C_curr, 3, 1, 1, rngs=rngs)
    self.stem_bn = ops.BatchNorm(C_curr, True, rngs=rngs)
    C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
    reduction_prev = False
    cells = []
    for i in range(layers):
      reduction = i in self.reduction_indices
      if reduction:
        C_curr *= 2
      cells.append(
          Cell(
              steps,
              multiplier,
              C_prev_prev,
              C_prev,
              C_curr,
              reduction,
              reduction_prev,
              self.primitives,
              scan_edges=scan_edges,
              remat=remat,
              rngs=rngs,
          )
      )
      reduction_prev = reduction
      C_prev_prev, C_prev = C_prev, multiplier * C_curr
    self.cells = nnx.List(cells)
    self.classifier = nnx.Linear(C_prev, num_classes, rngs=rngs)
    shape = (num_edges(steps), len(self.primitives))
    self.alphas_normal = ArchParam(
        alpha_init_scale * jax.random.normal(rngs.params(), shape)
    )
    self.alphas_reduce = ArchParam(
        alpha_init_scale * jax.random.normal(rngs.params(), shape)
    )

  @property
  def reduction_indices(self) -> tuple[int, ...]:
    """Cells that halve the spatial size: ``layers // 3`` and ``2 * layers // 3``."""
    return tuple(sorted({self.layers // 3, 2 * self.layers // 3}))

  def __call__(
      self,
      x: jax.Array,
      *,
      temperature: jax.Array | float = 1.0,
      key: jax.Array | None = None,
  ) -> jax.Array:
    """Class logits for a batch of NHWC images.

    Args:
      x: images of shape (N, H, W, in_channels).
      temperature: passed to the relaxation (an array, so changing it does
        not retrace).
      key: PRNG key for stochastic relaxations (Gumbel); unused by softmax.

    Returns:
      Logits of shape (N, num_classes), in float32.
    """
    key_normal = key_reduce = None
    if key is not None:
      key_normal, key_reduce = jax.random.split(key)
    weights_normal = self.relaxation(
        self.alphas_normal.get_value(), temperature=temperature, key=key_normal
    )
    weights_reduce = self.relaxation(
        self.alphas_reduce.get_value(), temperature=temperature, key=key_reduce
    )
    s0 = s1 = self.stem_bn(self.stem_conv(x))
    for cell in self.cells:
      weights = weights_reduce if cell.reduction else weights_normal
      s0, s1 = s1, cell(s0, s1, weights)
    pooled = jnp.mean(s1, axis=(1, 2))
    return self.classifier(pooled.astype(jnp.promote_types(pooled.dtype, jnp.float32)))


  def sampled(
      self,
      x: jax.Array,
      arch_normal: jax.Array,
      arch_reduce: jax.Array,
      op_ids: Sequence[int] | None = None,
  ) -> jax.Array:
    """Logits of the discrete child network ``(arch_normal, arch_reduce)``.

    The ENAS child: the supernet's own candidate ops, only the sampled ones
    run (see ``Cell.sampled``). The alphas are not used.

    Args:
      x: images of shape (N, H, W, in_channels).
      arch_normal, arch_reduce: int arrays of shape (steps, 4), rows
        ``(input_1, input_2, op_1, op_2)`` per node.
      op_ids: positions in ``primitives`` the op indices refer to; default:
        every primitive but ``none``.

    Returns:
      Logits of shape (N, num_classes), in float32.
    """
    if op_ids is None:
      op_ids = [i for i, p in enumerate(self.primitives) if p != "none"]
    s0 = s1 = self.stem_bn(self.stem_conv(x))
    for cell in self.cells:
      arch = arch_reduce if cell.reduction else arch_normal
      s0, s1 = s1, cell.sampled(s0, s1, arch, op_ids)
    pooled = jnp.mean(s1, axis=(1, 2))
    return self.classifier(pooled.astype(jnp.promote_types(pooled.dtype, jnp.float32)))


def split(model: nnx.Module):
  """Splits a model into ``(graphdef, weights, alphas, rest)`` by variable type.

  ``weights`` holds every ``nnx.Param``, ``alphas`` every ``ArchParam``, and
  ``rest`` everything else (BatchNorm statistics, RNG state).
  """
  return nnx.split(model, nnx.Param, ArchParam, ...)


def merge(graphdef, weights, alphas, rest) -> nnx.Module:
  """Inverse of ``split``."""
  return nnx.merge(graphdef, weights, alphas, rest, copy=True)

"""Candidate operations of the DARTS search space: ``PRIMITIVES`` and ``OPS``.

Every operation maps an NHWC array to an NHWC array. The structure follows the
DARTS reference (Liu et al., ICLR 2019, ``cnn/operations.py``): ReLU-Conv-BN
ordering, separable convolutions applied twice, dilated depthwise
convolutions, a factorized reduce for the stride-2 identity, convolutions
without bias and BatchNorm whose affine part is switched by ``affine`` (off in
the search network, on in the final network).

Operations are built through the ``OPS`` registry, ``OPS[name](C, stride,
affine, rngs=rngs)``, so a user adds a primitive with ``register_op`` without
editing this file:

  >>> from dnas import ops
  >>> @ops.register_op('conv_3x3')
  ... def conv_3x3(C, stride, affine, *, rngs):
  ...   return ops.ReLUConvBN(C, C, 3, stride, 1, affine, rngs=rngs)

Depthwise convolutions decide speed on XLA:CPU, where the grouped-convolution
path is tens of times slower than the same function written as shifted
multiply-adds (../shared/PERF_NOTES.md). ``depthwise_conv2d`` picks the
formulation per backend behind one function; all compute the same thing. On
CPU the shifted form carries its own derivatives (``shift_vjp``), written as
shifted sums too, so that autodiff does not multiply the k*k taps in the
backward pass; the compile time of a search step depends on it
(BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import os

from flax import nnx
import jax
from jax.ad_checkpoint import checkpoint_name
from jax.extend import core as jex_core
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp

__all__ = [
    "PRIMITIVES",
    "OPS",
    "register_op",
    "depthwise_conv2d",
    "max_pool_3x3",
    "avg_pool_3x3",
    "conv2d",
    "materialize",
    "torch_conv_init",
    "BatchNorm",
    "BATCHNORM_STATS",
    "Conv",
    "DepthwiseConv",
    "ReLUConvBN",
    "DilConv",
    "SepConv",
    "Identity",
    "Zero",
    "FactorizedReduce",
    "Pool",
    "Sequential",
]

PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]

# PyTorch's default convolution init (kaiming_uniform with a=sqrt(5)) is
# uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); keeping it keeps the reference's
# training dynamics.
torch_conv_init = jax.nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform"
)

# BatchNorm as in PyTorch: momentum 0.1 on the new statistic, eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
# The ``checkpoint_name`` of BatchNorm's two batch reductions (mean, mean of
# squares): a rematerialising caller's policy can keep them.
BATCHNORM_STATS = "batchnorm_stats"


DEPTHWISE_IMPLS = ("shift", "shift_vjp", "native")
# What configs and DNAS_DEPTHWISE accept: an implementation, or "auto" (per backend).
DEPTHWISE_CHOICES = ("auto",) + DEPTHWISE_IMPLS


def _depthwise_impl() -> str:
  choice = os.environ.get("DNAS_DEPTHWISE", "auto")
  if choice not in DEPTHWISE_CHOICES:
    raise ValueError(
        f"DNAS_DEPTHWISE={choice!r} is not one of {', '.join(DEPTHWISE_CHOICES)};"
        " unset it or pick one"
    )
  if choice != "auto":
    return choice
  return "shift_vjp" if jax.default_backend() == "cpu" else "native"


def depthwise_conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    dilation: int = 1,
    padding: int = 0,
    impl: str | None = None,
) -> jax.Array:
  """Depthwise 2-D convolution (``groups = channels``), NHWC.

  Args:
    x: input of shape (N, H, W, C).
    kernel: filters of shape (k, k, 1, C), the HWIO layout of a grouped conv.
    stride: spatial stride.
    dilation: spatial dilation of the kernel.
    padding: zero padding on each side of H and W.
    impl: ``'shift_vjp'`` (k*k shifted multiply-adds over the padded input
      with hand-written derivatives, the fast path on XLA:CPU), ``'shift'``
      (the same forward, differentiated by JAX: the k*k taps expand the
      backward, so it compiles 4-10x slower), ``'native'``
      (``conv_general_dilated`` with ``feature_group_count=C``, the fast path
      on GPU/TPU) or ``None`` to pick per backend (overridable with the
      ``DNAS_DEPTHWISE`` environment variable).

  Returns:
    The output of shape (N, H', W', C) with
    H' = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1.

  Example:
    >>> x = jnp.ones((1, 8, 8, 4)); k = jnp.ones((3, 3, 1, 4))
    >>> depthwise_conv2d(x, k, padding=1).shape
    (1, 8, 8, 4)
  """
  impl = impl or _depthwise_impl()
  if impl == "native":
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )
  if impl == "shift":
    return _shift_add(x, kernel[:, :, 0, :], stride, dilation, padding)
  if impl == "shift_vjp":
    return _conv(x, kernel[:, :, 0, :], stride, dilation, padding)
  raise ValueError(
      f"unknown depthwise impl {impl!r}; use one of {', '.join(DEPTHWISE_IMPLS)}"
  )


def _tap_windows(xp, k, stride, dilation, h_out, w_out):
  """The k*k strided windows of a padded input, one per kernel tap, row-major."""
  n, _, _, channels = xp.shape
  return [
      jax.lax.slice(
          xp,
          (0, i * dilation, j * dilation, 0),
          (
              n,
              i * dilation + (h_out - 1) * stride + 1,
              j * dilation + (w_out - 1) * stride + 1,
              channels,
          ),
          (1, stride, stride, 1),
      )
      for i in range(k)
      for j in range(k)
  ]


def _output_size(size, k, stride, dilation, padding):
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _shift_add(x, taps, stride, dilation, padding):
  """Depthwise conv as k*k shifted multiply-adds; ``taps`` is (k, k, C)."""
  k = taps.shape[0]
  h_out = _output_size(x.shape[1], k, stride, dilation, padding)
  w_out = _output_size(x.shape[2], k, stride, dilation, padding)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out = None
  for t, window in enumerate(_tap_windows(xp, k, stride, dilation, h_out, w_out)):
    term = window * taps[t // k, t % k]
    out = term if out is None else out + term
  return out


def materialize(x):
  """``x``, computed once into its own buffer.

  XLA:CPU fuses a cheap producer into every consumer, so a k*k-tap sum read
  by several consumers (a node's gradient feeds every candidate op's
  backward) is recomputed by each: in a 4-node cell that made the backward
  4x slower and its HLO 3x larger. A fused ``dynamic-slice`` (a scanned
  edge's weights and input, read from stacks) also makes LLVM emit its
  consumers' loops as scalar code (``Cell``'s scan body). The cumulative
  sum of the two-element stack ``[0, x]`` (``x`` is its second partial sum,
  exactly) is not fused into consumers and costs one copy. (``lax.optimization_barrier``
  does not help, XLA:CPU drops it before fusion; a plain ``sum`` over the
  stack is taken by XLA:CPU's YNNPACK reduce, which makes the copy 12x
  slower.)
  """
  return jax.lax.cumsum(jnp.stack([jnp.zeros_like(x), x]), axis=0)[1]


def _spread(g, fill, geometry):
  """An output-resolution array at input resolution, for a backward pass.

  ``geometry`` is the forward window's (stride, dilation, padding, h, w, k),
  h and w its input size. ``stride - 1`` cells of ``fill`` between samples, padded so that a
  stride-1 window ``t`` (row-major over the k x k taps, dilated) over the
  result, at input pixel q, reads the output whose tap ``k*k - 1 - t`` sits
  at q.
  """
  stride, dilation, padding, h, w, k = geometry
  before = (k - 1) * dilation - padding
  after_h = h + (k - 1) * dilation - before - ((g.shape[1] - 1) * stride + 1)
  after_w = w + (k - 1) * dilation - before - ((g.shape[2] - 1) * stride + 1)
  return jax.lax.pad(
      g,
      fill,
      (
          (0, 0, 0),
          (before, after_h, stride - 1),
          (before, after_w, stride - 1),
          (0, 0, 0),
      ),
  )


# The shift_vjp path: three bilinear JAX primitives that are each other's
# derivatives, y = conv(x, taps), the input gradient dx = conv_t(g, taps) and
# the weight gradient dtaps = conv_w(x, g). Each is lowered as shifted
# multiply-adds, and each carries a forward-mode rule (bilinear: the sum of
# the two partial applications) and a transpose rule (the other two), so
# autodiff never expands the k*k taps, in reverse mode, in forward mode, or
# nested (the exact second-order hypergradient is forward-over-reverse).
# Each takes the static geometry (stride, dilation, padding, h, w, k) of the
# forward conv (h, w: its input size, k: its kernel size).


def _conv_impl(x, taps, *, geometry):
  stride, dilation, padding = geometry[:3]
  return _shift_add(x, taps, stride, dilation, padding)


def _conv_t_impl(g, taps, *, geometry):
  """The input gradient of ``_conv``: a stride-1 shift-add with the flipped
  kernel over the cotangent spread to input resolution (stride - 1 zeros
  between samples) and padded so that output pixel u reads
  g_up[u + padding - i * dilation] for tap i."""
  dilation = geometry[1]
  g_up = _spread(g, jnp.zeros((), g.dtype), geometry)
  return materialize(_shift_add(g_up, taps[::-1, ::-1], 1, dilation, 0))


def _conv_w_impl(x, g, *, geometry):
  """The weight gradient of ``_conv``: for every tap, the sum over batch and
  space of its input window times the cotangent.

  All k*k sums run in one variadic reduction (one pass over ``x`` and
  ``g``) over space only, keeping (batch, channel); a second, small
  reduction sums the batch. XLA:CPU's loop for a reduction over
  (batch, height, width) is 1.5-2.5x slower at the DARTS shapes (k=3:
  3.5 ms against 1.9 ms at (64, 32, 32, 16)).
  """
  stride, dilation, padding, _, _, k = geometry
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  windows = _tap_windows(xp, k, stride, dilation, g.shape[1], g.shape[2])
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  products = [(window * g).astype(acc_dtype) for window in windows]
  per_image = jax.lax.reduce(
      products,
      [jnp.zeros((), acc_dtype)] * len(products),
      lambda a, b: [u + v for u, v in zip(a, b)],
      (1, 2),
  )
  sums = jnp.sum(jnp.stack(per_image), axis=1)
  return sums.reshape(k, k, -1).astype(x.dtype)


def _primitive(name, impl, linear=False):
  """A JAX primitive computed by the jnp function ``impl(*args, **params)``.

  Its shape rule is ``impl``'s own (``jax.eval_shape``, once per shape and
  parameters: every retrace during differentiation binds the primitive
  again), and it lowers to ``impl``'s HLO. ``linear`` marks ``impl(a, b)``
  as linear in ``a`` with ``b`` integer data (a pool's winning taps) and
  gives it the forward rule ``prim(da, b)``; bilinear primitives get theirs
  from ``ad.defbilinear``.
  """
  prim = jex_core.Primitive(name)
  prim.def_impl(impl)

  @functools.lru_cache(maxsize=None)
  def out_shape(in_shapes, params):
    out = jax.eval_shape(
        functools.partial(impl, **dict(params)),
        *(jax.ShapeDtypeStruct(*shape) for shape in in_shapes),
    )
    return jax.core.ShapedArray(out.shape, out.dtype)

  prim.def_abstract_eval(
      lambda *avals, **params: out_shape(
          tuple((a.shape, a.dtype) for a in avals), tuple(sorted(params.items()))
      )
  )
  mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=False))
  batching.primitive_batchers[prim] = functools.partial(_fold_into_channels, prim)
  if linear:
    ad.defjvp(prim, lambda t, a, b, **params: prim.bind(t, b, **params), None)
  return prim


def _fold_into_channels(prim, args, dims, **params):
  """The batching rule of a channel-wise primitive (every operand's last
  axis is channels, and channels never mix): the mapped axis joins the
  channels, unmapped operands are repeated along it."""
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  folded = []
  for a, d in zip(args, dims):
    if d is None:
      a = jnp.broadcast_to(a[..., None, :], a.shape[:-1] + (size, a.shape[-1]))
    else:
      a = jnp.moveaxis(a, d, -2)
    folded.append(a.reshape(a.shape[:-2] + (-1,)))
  out = prim.bind(*folded, **params)
  return out.reshape(out.shape[:-1] + (size, -1)), out.ndim - 1


_conv_p = _primitive("dnas_depthwise_conv", _conv_impl)
_conv_t_p = _primitive("dnas_depthwise_conv_t", _conv_t_impl)
_conv_w_p = _primitive("dnas_depthwise_conv_w", _conv_w_impl)


def _conv(x, taps, stride, dilation, padding):
  """Depthwise conv with hand-written derivatives; ``taps`` is (k, k, C)."""
  geometry = (stride, dilation, padding, x.shape[1], x.shape[2], taps.shape[0])
  return _conv_p.bind(x, taps, geometry=geometry)


def _conv_t(g, taps, geometry):
  return _conv_t_p.bind(g, taps, geometry=geometry)


def _conv_w(x, g, geometry):
  return _conv_w_p.bind(x, g, geometry=geometry)


# Transposes: y = conv(x, taps) gives x_bar = conv_t(y_bar, taps) and
# taps_bar = conv_w(x, y_bar); the rules of conv_t and conv_w follow from
# the same bilinear form <conv(x, taps), g>.
ad.defbilinear(
    _conv_p,
    lambda ct, x, taps, *, geometry: _conv_t(ct, taps, geometry),
    lambda ct, x, taps, *, geometry: _conv_w(x, ct, geometry),
)
ad.defbilinear(
    _conv_t_p,
    lambda ct, g, taps, *, geometry: _conv_p.bind(ct, taps, geometry=geometry),
    lambda ct, g, taps, *, geometry: _conv_w(ct, g, geometry),
)
ad.defbilinear(
    _conv_w_p,
    lambda ct, x, g, *, geometry: _conv_t(g, ct, geometry),
    lambda ct, x, g, *, geometry: _conv_p.bind(x, ct, geometry=geometry),
)


def conv2d(
    x: jax.Array, kernel: jax.Array, *, stride=1, padding=0, dilation=1
) -> jax.Array:
  """Dense 2-D convolution, NHWC input, HWIO kernel, symmetric zero padding.

  ``stride``, ``padding`` and ``dilation`` are ints or (h, w) pairs. A 1x1
  kernel without padding runs as a (strided) matrix product over channels:
  XLA:CPU sometimes lowers the weight gradient of a 1x1 convolution as a
  convolution over the whole image (inside a ``lax.scan`` body it always
  does), about 20x slower than the same product as a matmul. The product is
  taken on the pixels flattened to rows, (N*H*W, C) @ (C, D): its weight
  gradient is then one dot contracting the rows of both operands in their
  own layout. Taken on the 4-D input, XLA:CPU transposed the cotangent to
  (D, N*H*W) first, in a copy that evaluated the whole fused elementwise
  backward chain (BatchNorm, ReLU, drop-path) in transposed order: 28% of
  the DARTS_V2 training step's kernel time.
  """
  stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
  padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
  dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
  if kernel.shape[:2] == (1, 1) and padding == (0, 0):
    if stride != (1, 1):
      x = x[:, :: stride[0], :: stride[1], :]
    n, h, w, c = x.shape
    rows = x.reshape(n * h * w, c)
    y = jax.lax.dot_general(rows, kernel[0, 0], (((1,), (0,)), ((), ())))
    return y.reshape(n, h, w, kernel.shape[-1])
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=stride,
      padding=((padding[0], padding[0]), (padding[1], padding[1])),
      rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def _pool_window(x, init, reducer, stride):
  return jax.lax.reduce_window(
      x,
      init,
      reducer,
      window_dimensions=(1, 3, 3, 1),
      window_strides=(1, stride, stride, 1),
      padding=((0, 0), (1, 1), (1, 1), (0, 0)),
  )


def max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  """3x3 max pooling with padding 1 (the padding never wins the max).

  The maximum of the nine shifted windows, with a hand-written derivative:
  the forward keeps which tap won each window (the first, as PyTorch's does,
  NaN winning); the tangent reads each output's winning input
  (``_pool_gather``) and the cotangent goes back to it as nine shifted
  selects (``_pool_scatter``, its transpose). XLA:CPU's own derivative of a
  window max (select-and-scatter) costs 5x the forward.
  """
  return _max_pool(x, (stride, x.shape[1], x.shape[2]))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool(x, geometry):
  return _max_pool_fwd(x, geometry)[0]


@_max_pool.defjvp
def _max_pool_jvp(geometry, primals, tangents):
  out, winner = _max_pool_fwd(primals[0], geometry)
  return out, _pool_gather_p.bind(tangents[0], winner, geometry=geometry)


def _max_pool_fwd(x, geometry):
  stride = geometry[0]
  h_out = _output_size(x.shape[1], 3, stride, 1, 1)
  w_out = _output_size(x.shape[2], 3, stride, 1, 1)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  windows = _tap_windows(xp, 3, stride, 1, h_out, w_out)
  out, winner = windows[0], jnp.zeros(windows[0].shape, jnp.int8)
  for tap, window in enumerate(windows[1:], start=1):
    better = (window > out) | jnp.isnan(window)
    out = jnp.where(better, window, out)
    winner = jnp.where(better, jnp.int8(tap), winner)
  return out, winner


def _pool_gather_impl(dx, winner, *, geometry):
  """Each output's value of ``dx`` at its winning tap (the pool's tangent)."""
  stride = geometry[0]
  xp = jnp.pad(dx, ((0, 0), (1, 1), (1, 1), (0, 0)))
  windows = _tap_windows(xp, 3, stride, 1, winner.shape[1], winner.shape[2])
  out = None
  for tap, window in enumerate(windows):
    term = jnp.where(winner == tap, window, jnp.zeros((), dx.dtype))
    out = term if out is None else out + term
  return out


def _pool_scatter_impl(g, winner, *, geometry):
  """The transpose of ``_pool_gather``: input pixel q gathers g[u] from every
  output u whose winning tap sits at q, read on the cotangent spread to
  input resolution as in ``_conv_t`` (k=3, padding 1)."""
  stride, h, w = geometry
  spread = (stride, 1, 1, h, w, 3)
  g_up = _spread(g, jnp.zeros((), g.dtype), spread)
  won = _spread(winner, jnp.int8(-1), spread)
  g_windows = _tap_windows(g_up, 3, 1, 1, h, w)
  won_windows = _tap_windows(won, 3, 1, 1, h, w)
  dx = None
  for t, (gw, ww) in enumerate(zip(g_windows, won_windows)):
    # Window t reads output u = q + 1 - i, whose tap i = 2 - (t's row).
    tap = 8 - t
    term = jnp.where(ww == tap, gw, jnp.zeros((), g.dtype))
    dx = term if dx is None else dx + term
  return materialize(dx)


_pool_gather_p = _primitive("dnas_max_pool_gather", _pool_gather_impl, linear=True)
_pool_scatter_p = _primitive("dnas_max_pool_scatter", _pool_scatter_impl, linear=True)


def _transposing_to(other):
  """The transpose rule of a primitive linear in its first argument whose
  transpose is ``other`` (the winners are integer data, never transposed)."""

  def rule(ct, arg, winner, *, geometry):
    if type(ct) is ad.Zero:
      return ad.Zero(arg.aval.to_ct_aval()), None
    return other.bind(ct, winner, geometry=geometry), None

  return rule


ad.primitive_transposes[_pool_gather_p] = _transposing_to(_pool_scatter_p)
ad.primitive_transposes[_pool_scatter_p] = _transposing_to(_pool_gather_p)


def avg_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  """3x3 average pooling, padding 1, padded cells not counted.

  This is PyTorch's ``AvgPool2d(3, stride, padding=1, count_include_pad=False)``,
  as the DARTS reference uses. The window sum is the depthwise convolution
  with an all-ones kernel (``shift_vjp``'s hand-written derivatives), divided
  by the count of real cells in each window.
  """
  taps = jnp.ones((3, 3, x.shape[-1]), x.dtype)
  total = _conv(x, taps, stride, 1, 1)
  ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
  count = _pool_window(ones, 0.0, jax.lax.add, stride)
  return total / count


class BatchNorm(nnx.Module):
  """BatchNorm over N, H, W with PyTorch's conventions; NHWC.

  In training mode it normalises with the batch's biased variance and updates
  running statistics with momentum 0.1 and the unbiased variance, as
  ``torch.nn.BatchNorm2d`` does; in eval mode (``use_running_average=True``,
  set by ``model.eval()``) it uses the running statistics. ``affine=False``
  drops the learnable scale and bias (the DARTS search network). Statistics
  are computed in float32 whatever the input dtype. Under ``jit`` with a
  batch sharded over devices the mean is global: the compiler inserts the
  reduction, so the result does not depend on the device count.

  Running statistics are written with ``Variable.set_value``: flax's own
  BatchNorm writes them with ``var[...] = ...``, which makes tracing time grow
  quadratically with network size (about 100 s for the DARTS_V2 network).

  Args:
    num_features: channels (the last axis).
    affine: learn a per-channel scale and bias.
    rngs: unused (BatchNorm has no random init); accepted for a uniform API.
  """

  def __init__(self, num_features: int, affine: bool = True, *, rngs: nnx.Rngs):
    del rngs
    self.num_features = num_features
    self.use_running_average = False
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    if affine:
      self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
      self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    else:
      self.scale = None
      self.bias = None

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.use_running_average:
      mean, var = self.mean.get_value(), self.var.get_value()
    else:
      x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      # The two reductions are named so that a rematerialising caller can
      # keep them (C floats each) instead of redoing them over the batch.
      mean = checkpoint_name(jnp.mean(x32, axis=(0, 1, 2)), BATCHNORM_STATS)
      mean_sq = checkpoint_name(
          jnp.mean(jnp.square(x32), axis=(0, 1, 2)), BATCHNORM_STATS
      )
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      count = x.shape[0] * x.shape[1] * x.shape[2]
      unbiased = var * (count / max(count - 1, 1))
      self.mean.set_value(
          jax.lax.stop_gradient(
              _BN_MOMENTUM * self.mean.get_value() + (1 - _BN_MOMENTUM) * mean
          )
      )
      self.var.set_value(
          jax.lax.stop_gradient(
              _BN_MOMENTUM * self.var.get_value() + (1 - _BN_MOMENTUM) * unbiased
          )
      )
    inv = jax.lax.rsqrt(var + _BN_EPSILON)
    if self.scale is not None:
      inv = inv * self.scale.get_value()
    shift = -mean * inv
    if self.bias is not None:
      shift = shift + self.bias.get_value()
    return (x * inv.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)


class Conv(nnx.Module):
  """Bias-free dense convolution with PyTorch's init, NHWC.

  ``kernel_size``, ``stride`` and ``padding`` are ints or (h, w) pairs.
  """

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kernel_size,
      stride=1,
      padding=0,
      dilation=1,
      *,
      rngs: nnx.Rngs,
  ):
    kh, kw = (
        (kernel_size, kernel_size)
        if isinstance(kernel_size, int)
        else tuple(kernel_size)
    )
    self.stride = stride
    self.padding = padding
    self.dilation = dilation
    self.kernel = nnx.Param(
        torch_conv_init(rngs.params(), (kh, kw, in_channels, out_channels))
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return conv2d(
        x,
        self.kernel.get_value().astype(x.dtype),
        stride=self.stride,
        padding=self.padding,
        dilation=self.dilation,
    )


class DepthwiseConv(nnx.Module):
  """Bias-free depthwise convolution (one k x k filter per channel)."""

  def __init__(
      self,
      channels: int,
      kernel_size: int,
      stride: int = 1,
      padding: int = 0,
      dilation: int = 1,
      *,
      rngs: nnx.Rngs,
  ):
    self.stride = stride
    self.padding = padding
    self.dilation = dilation
    self.kernel = nnx.Param(
        torch_conv_init(rngs.params(), (kernel_size, kernel_size, 1, channels))
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return depthwise_conv2d(
        x,
        self.kernel.get_value().astype(x.dtype),
        stride=self.stride,
        dilation=self.dilation,
        padding=self.padding,
    )


class Sequential(nnx.Module):
  """Applies its layers in order (callables without state are allowed)."""

  def __init__(self, *layers):
    self.layers = nnx.List(layers)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = layer(x)
    return x


class ReLUConvBN(nnx.Module):
  """ReLU, bias-free convolution, BatchNorm."""

  def __init__(
      self, C_in, C_out, kernel_size, stride, padding, affine=True, *, rngs
  ):
    self.conv = Conv(C_in, C_out, kernel_size, stride, padding, rngs=rngs)
    self.bn = BatchNorm(C_out, affine, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.conv(jax.nn.relu(x)))


class DilConv(nnx.Module):
  """ReLU, dilated depthwise conv, pointwise conv, BatchNorm."""

  def __init__(
      self,
      C_in,
      C_out,
      kernel_size,
      stride,
      padding,
      dilation,
      affine=True,
      *,
      rngs,
  ):
    self.depthwise = DepthwiseConv(
        C_in, kernel_size, stride, padding, dilation, rngs=rngs
    )
    self.pointwise = Conv(C_in, C_out, 1, rngs=rngs)
    self.bn = BatchNorm(C_out, affine, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.pointwise(self.depthwise(jax.nn.relu(x))))


class SepConv(nnx.Module):
  """Separable convolution applied twice, as in DARTS and NASNet.

  ReLU, depthwise (stride), pointwise, BN, ReLU, depthwise (stride 1),
  pointwise, BN.
  """

  def __init__(
      self, C_in, C_out, kernel_size, stride, padding, affine=True, *, rngs
  ):
    self.depthwise1 = DepthwiseConv(C_in, kernel_size, stride, padding, rngs=rngs)
    self.pointwise1 = Conv(C_in, C_in, 1, rngs=rngs)
    self.bn1 = BatchNorm(C_in, affine, rngs=rngs)
    self.depthwise2 = DepthwiseConv(C_in, kernel_size, 1, padding, rngs=rngs)
    self.pointwise2 = Conv(C_in, C_out, 1, rngs=rngs)
    self.bn2 = BatchNorm(C_out, affine, rngs=rngs)

  def __call__(self, x):
    x = self.bn1(self.pointwise1(self.depthwise1(jax.nn.relu(x))))
    return self.bn2(self.pointwise2(self.depthwise2(jax.nn.relu(x))))


class Identity(nnx.Module):
  """Returns its input."""

  def __call__(self, x):
    return x


class Zero(nnx.Module):
  """The ``none`` op: zeros of the output shape (strided when stride > 1)."""

  def __init__(self, stride: int = 1):
    self.stride = stride

  def __call__(self, x):
    return jnp.zeros_like(x[:, :: self.stride, :: self.stride, :])


class FactorizedReduce(nnx.Module):
  """Stride-2 identity: two 1x1 stride-2 convs on offset grids, concatenated.

  The second conv sees the input shifted by one pixel in H and W, so the two
  halves sample complementary positions. For odd sizes the shifted input is
  zero-padded at the bottom and right so both halves have the same shape.
  """

  def __init__(self, C_in, C_out, affine=True, *, rngs):
    if C_out % 2:
      raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
    self.conv_1 = Conv(C_in, C_out // 2, 1, 2, rngs=rngs)
    self.conv_2 = Conv(C_in, C_out // 2, 1, 2, rngs=rngs)
    self.bn = BatchNorm(C_out, affine, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(x)
    shifted = x[:, 1:, 1:, :]
    pad_h = x.shape[1] % 2
    pad_w = x.shape[2] % 2
    if pad_h or pad_w:
      shifted = jnp.pad(shifted, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    out = jnp.concatenate([self.conv_1(x), self.conv_2(shifted)], axis=-1)
    return self.bn(out)


class Pool(nnx.Module):
  """3x3 max or average pooling, padding 1."""

  def __init__(self, kind: str, stride: int = 1):
    if kind not in ("max", "avg"):
      raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    self.kind = kind
    self.stride = stride

  def __call__(self, x):
    fn = max_pool_3x3 if self.kind == "max" else avg_pool_3x3
    return fn(x, self.stride)


OpFactory = Callable[..., nnx.Module]
OPS: dict[str, OpFactory] = {}


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
  """Registers ``factory(C, stride, affine, *, rngs) -> nnx.Module`` in ``OPS``.

  Args:
    name: the primitive's name, as used in ``PRIMITIVES`` lists and genotypes.

  Returns:
    A decorator that stores the factory and returns it unchanged.
  """

  def decorate(factory: OpFactory) -> OpFactory:
    OPS[name] = factory
    return factory

  return decorate


register_op("none")(lambda C, stride, affine, *, rngs: Zero(stride))
register_op("max_pool_3x3")(lambda C, stride, affine, *, rngs: Pool("max", stride))
register_op("avg_pool_3x3")(lambda C, stride, affine, *, rngs: Pool("avg", stride))
register_op("skip_connect")(
    lambda C, stride, affine, *, rngs: Identity()
    if stride == 1
    else FactorizedReduce(C, C, affine, rngs=rngs)
)
register_op("sep_conv_3x3")(
    lambda C, stride, affine, *, rngs: SepConv(C, C, 3, stride, 1, affine, rngs=rngs)
)
register_op("sep_conv_5x5")(
    lambda C, stride, affine, *, rngs: SepConv(C, C, 5, stride, 2, affine, rngs=rngs)
)
register_op("sep_conv_7x7")(
    lambda C, stride, affine, *, rngs: SepConv(C, C, 7, stride, 3, affine, rngs=rngs)
)
register_op("dil_conv_3x3")(
    lambda C, stride, affine, *, rngs: DilConv(
        C, C, 3, stride, 2, 2, affine, rngs=rngs
    )
)
register_op("dil_conv_5x5")(
    lambda C, stride, affine, *, rngs: DilConv(
        C, C, 5, stride, 4, 2, affine, rngs=rngs
    )
)
register_op("conv_7x1_1x7")(
    lambda C, stride, affine, *, rngs: Sequential(
        jax.nn.relu,
        Conv(C, C, (1, 7), (1, stride), (0, 3), rngs=rngs),
        Conv(C, C, (7, 1), (stride, 1), (3, 0), rngs=rngs),
        BatchNorm(C, affine, rngs=rngs),
    )
)

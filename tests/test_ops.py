"""Tests for the op kernels: every hand-written derivative against XLA's own path.

Depthwise convolutions against the native grouped convolution, the pools
against ``lax.reduce_window`` (whose derivative is XLA's select-and-scatter /
window sum), and the 1x1 convolution's matmul against ``conv_general_dilated``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import ops

# (kernel, stride, dilation, padding) of every depthwise conv in the DARTS
# space (sep_conv 3x3/5x5, dil_conv 3x3/5x5, stride 1 and 2), plus no padding.
GEOMETRIES = {
    "sep3": (3, 1, 1, 1),
    "sep5": (5, 1, 1, 2),
    "sep3_stride2": (3, 2, 1, 1),
    "sep5_stride2": (5, 2, 1, 2),
    "dil3": (3, 1, 2, 2),
    "dil5_stride2": (5, 2, 2, 4),
    "valid_stride2": (3, 2, 1, 0),
}


def _conv(impl, k, s, d, p):
  def conv(x, w):
    return ops.depthwise_conv2d(x, w, stride=s, dilation=d, padding=p, impl=impl)

  return conv


def _inputs(k, size):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  w = jax.random.normal(jax.random.key(1), (k, k, 1, 3))
  return x, w


@pytest.mark.parametrize("impl", ["shift", "shift_vjp"])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_depthwise_matches_native(impl, size, geometry):
  x, w = _inputs(geometry[0], size)
  conv, native = _conv(impl, *geometry), _conv("native", *geometry)
  np.testing.assert_allclose(conv(x, w), native(x, w), rtol=1e-5, atol=1e-5)
  y = native(x, w)
  cotangent = jax.random.normal(jax.random.key(2), y.shape)
  grads = jax.vjp(conv, x, w)[1](cotangent)
  expected = jax.vjp(native, x, w)[1](cotangent)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_shift_vjp_second_order_matches_native(geometry):
  """The exact second-order DARTS hypergradient differentiates a gradient."""
  x, w = _inputs(geometry[0], 7)

  def outer(impl):
    conv = _conv(impl, *geometry)
    inner = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))

    def f(x, w):
      dx, dw = inner(x, w)
      return jnp.sum(jnp.cos(dx)) + jnp.sum(dw**2)

    return jax.grad(f, argnums=(0, 1))(x, w)

  for got, want in zip(outer("shift_vjp"), outer("native")):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_shift_vjp_forward_mode_and_vmap_match_native(geometry):
  """The primitives' forward rules (jvp, and jvp of a gradient: the exact
  hypergradient's forward-over-reverse) and their batching rule (a per-example
  gradient under vmap) against the native grouped convolution."""
  x, w = _inputs(geometry[0], 7)
  dx = jax.random.normal(jax.random.key(3), x.shape)
  dw = jax.random.normal(jax.random.key(4), w.shape)

  def loss(impl):
    conv = _conv(impl, *geometry)
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

  def jvp(impl):
    return jax.jvp(loss(impl), (x, w), (dx, dw))[1]

  def forward_over_reverse(impl):
    return jax.jvp(jax.grad(loss(impl), argnums=(0, 1)), (x, w), (dx, dw))[1]

  def per_example(impl):
    # vmap over the images with the kernel shared, and over kernels with x shared.
    per_image = jax.vmap(jax.grad(loss(impl), argnums=1), in_axes=(0, None))(x[:, None], w)
    per_kernel = jax.vmap(loss(impl), in_axes=(None, 0))(x, jnp.stack([w, dw]))
    return per_image, per_kernel

  for fn in (jvp, forward_over_reverse, per_example):
    for got, want in zip(jax.tree.leaves(fn("shift_vjp")), jax.tree.leaves(fn("native"))):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_depthwise_env_choice(monkeypatch):
  monkeypatch.setenv("DNAS_DEPTHWISE", "nope")
  with pytest.raises(ValueError, match="DNAS_DEPTHWISE"):
    ops.depthwise_conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), padding=1)
  for impl in ops.DEPTHWISE_IMPLS:
    monkeypatch.setenv("DNAS_DEPTHWISE", impl)
    out = ops.depthwise_conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), padding=1)
    assert out.shape == (1, 4, 4, 2)


def _reference_max_pool(x, stride):
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
      ((0, 0), (1, 1), (1, 1), (0, 0)),
  )


def _reference_avg_pool(x, stride):
  window = lambda v: jax.lax.reduce_window(  # noqa: E731
      v, 0.0, jax.lax.add, (1, 3, 3, 1), (1, stride, stride, 1),
      ((0, 0), (1, 1), (1, 1), (0, 0)),
  )
  return window(x) / window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype))


POOLS = {
    "max": (ops.max_pool_3x3, _reference_max_pool),
    "avg": (ops.avg_pool_3x3, _reference_avg_pool),
}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("kind", POOLS)
def test_pools_match_reduce_window(kind, size, stride):
  """Values, input gradient and the second derivative DARTS's exact
  hypergradient takes (grad of <grad, v> w.r.t. the cotangent)."""
  pool, reference = POOLS[kind]
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
  y = pool(x, stride)
  np.testing.assert_allclose(y, reference(x, stride), rtol=1e-6, atol=1e-6)
  cotangent = jax.random.normal(jax.random.key(1), y.shape)
  got = jax.vjp(lambda x: pool(x, stride), x)[1](cotangent)[0]
  want = jax.vjp(lambda x: reference(x, stride), x)[1](cotangent)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  v = jax.random.normal(jax.random.key(2), x.shape)

  def second(fn):
    return jax.grad(
        lambda c: jnp.vdot(jax.vjp(lambda x: fn(x, stride), x)[1](c)[0], v)
    )(cotangent)

  np.testing.assert_allclose(second(pool), second(reference), rtol=1e-6, atol=1e-6)

  # Forward mode: the jvp, and the jvp of the gradient (forward-over-reverse).
  def forward(fn):
    f = lambda x: jnp.sum(jnp.sin(fn(x, stride)) ** 2)  # noqa: E731
    return jax.jvp(f, (x,), (v,))[1], jax.jvp(jax.grad(f), (x,), (v,))[1]

  for got, want in zip(forward(pool), forward(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Batching: a pool vmapped over the images.
  np.testing.assert_allclose(
      jax.vmap(lambda x: pool(x[None], stride)[0])(x), y, rtol=1e-6, atol=1e-6
  )


def test_max_pool_gradient_goes_to_the_first_maximum():
  """PyTorch's rule on ties: the first maximum of the window (row-major)."""
  x = jnp.zeros((1, 3, 3, 1))
  grad = jax.grad(lambda x: ops.max_pool_3x3(x, 2).sum())(x)
  # One output (stride 2 over 3x3, padding 1): windows rows -1..1, cols -1..1;
  # the first real cell of the window is (0, 0).
  assert grad.shape == (1, 3, 3, 1)
  expected = np.zeros((1, 3, 3, 1))
  expected[0, 0, 0, 0] = 1.0  # output (0,0)
  expected[0, 0, 1, 0] += 1.0  # output (0,1): window cols 1..3, first (0,1)
  expected[0, 1, 0, 0] += 1.0  # output (1,0)
  expected[0, 1, 1, 0] += 1.0  # output (1,1)
  np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_matmul_matches_convolution(stride):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 5))
  kernel = jax.random.normal(jax.random.key(1), (1, 1, 5, 4))

  def reference(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((0, 0), (0, 0)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

  conv = lambda x, kernel: ops.conv2d(x, kernel, stride=stride)  # noqa: E731
  y = conv(x, kernel)
  np.testing.assert_allclose(y, reference(x, kernel), rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), y.shape)
  got = jax.vjp(conv, x, kernel)[1](cotangent)
  want = jax.vjp(reference, x, kernel)[1](cotangent)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_materialize_is_exact():
  # (Subnormals are flushed by any XLA:CPU arithmetic, so none here.)
  x = jnp.array([0.0, -0.0, 1.5e-30, -3.5, 7e30, jnp.inf, -jnp.inf, jnp.nan])
  np.testing.assert_array_equal(ops.materialize(x), x)


def test_batchnorm_statistics_are_kept_by_remat():
  """With its statistics saved, a rematerialised BatchNorm's backward pass
  redoes neither batch reduction (mean, mean of squares); gradients agree."""
  bn = ops.BatchNorm(4, affine=False, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(bn)

  def f(x):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, state, copy=True)(x)))

  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  counts, grads = [], []
  for names in (("nothing",), (ops.BATCHNORM_STATS,)):
    policy = jax.checkpoint_policies.save_only_these_names(*names)
    grad = jax.grad(jax.checkpoint(f, policy=policy))
    counts.append(str(jax.make_jaxpr(grad)(x)).count("reduce_sum"))
    grads.append(grad(x))
  assert counts[1] == counts[0] - 2
  np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads[0], jax.grad(f)(x), rtol=1e-5, atol=1e-6)

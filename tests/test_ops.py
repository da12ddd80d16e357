"""Tests for the depthwise convolution paths: every impl against the native one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_depthwise_env_choice(monkeypatch):
  monkeypatch.setenv("DNAS_DEPTHWISE", "nope")
  with pytest.raises(ValueError, match="DNAS_DEPTHWISE"):
    ops.depthwise_conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), padding=1)
  for impl in ops.DEPTHWISE_IMPLS:
    monkeypatch.setenv("DNAS_DEPTHWISE", impl)
    out = ops.depthwise_conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), padding=1)
    assert out.shape == (1, 4, 4, 2)

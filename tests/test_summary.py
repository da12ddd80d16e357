"""Tests for parameter and multiply-add counts on hand-countable modules."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

from dnas import ops
from dnas import summary


class _Block(nnx.Module):
  """Conv 3x3 (3->8), depthwise 3x3 stride 2, BN, linear, and a nested scan."""

  def __init__(self, *, rngs):
    self.conv = ops.Conv(3, 8, 3, 1, 1, rngs=rngs)
    self.depthwise = ops.DepthwiseConv(8, 3, 2, 1, rngs=rngs)
    self.bn = ops.BatchNorm(8, True, rngs=rngs)
    self.auxiliary_linear = nnx.Linear(8, 5, rngs=rngs)
    self.square = nnx.Param(jnp.eye(5))

  def __call__(self, x):
    x = self.bn(self.depthwise(jax.nn.relu(self.conv(x))))
    y = jax.jit(self.auxiliary_linear)(jnp.mean(x, axis=(1, 2)))
    y, _ = jax.lax.scan(lambda c, _: (c @ self.square[...], None), y, None, length=3)
    return y


def test_count_params_by_hand():
  block = _Block(rngs=nnx.Rngs(0))
  weights = 9 * 3 * 8 + 9 * 8 + 2 * 8 + 25
  assert summary.count_params(block) == weights
  assert summary.count_params(block, exclude_auxiliary=False) == weights + 8 * 5 + 5


@pytest.mark.parametrize("depthwise", ["shift_vjp", "shift", "native", None])
def test_count_macs_by_hand(monkeypatch, depthwise):
  if depthwise is None:
    monkeypatch.delenv("DNAS_DEPTHWISE", raising=False)
  else:
    monkeypatch.setenv("DNAS_DEPTHWISE", depthwise)
  block = _Block(rngs=nnx.Rngs(0))
  conv = 8 * 8 * 8 * (9 * 3)
  depthwise_macs = 4 * 4 * 8 * 9
  linear = 8 * 5
  scan = 3 * 5 * 5
  expected = conv + depthwise_macs + linear + scan
  assert summary.count_macs(block, (4, 8, 8, 3)) == expected
  assert os.environ.get("DNAS_DEPTHWISE") == depthwise  # restored
  assert not block.bn.use_running_average  # the model's mode is untouched


def test_count_macs_needs_a_batch_dimension():
  with pytest.raises(ValueError, match="leading batch dimension"):
    summary.count_macs(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), ())

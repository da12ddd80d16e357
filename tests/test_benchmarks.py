"""The benchmarks' shared helpers (benchmarks/_harness.py)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import _harness  # noqa: E402


def _step(params, momentum, x, scale):
  """A stand-in training step: two carried arrays, two constants, a metric."""
  momentum = 0.9 * momentum + jnp.sin(params) * x
  params = params - scale * momentum
  return params, momentum, jnp.sum(params**2)


def test_repeated_runs_the_step_k_times_in_one_scan():
  params, momentum = jnp.linspace(-1.0, 1.0, 5), jnp.zeros(5)
  x, scale = jnp.float32(0.5), jnp.float32(0.1)
  p, m = params, momentum
  for _ in range(4):
    p, m, loss = _step(p, m, x, scale)
  many = jax.jit(_harness.repeated(_step, 4, 2))
  p4, m4, loss4 = many(params, momentum, x, scale)
  np.testing.assert_allclose(p4, p, rtol=1e-6)
  np.testing.assert_allclose(m4, m, rtol=1e-6)
  np.testing.assert_allclose(loss4, loss, rtol=1e-6)  # the last step's metric
  assert "while" in many.lower(params, momentum, x, scale).as_text()


def test_repeated_once_is_the_step_itself_and_zero_is_refused():
  assert _harness.repeated(_step, 1, 2) is _step
  with pytest.raises(SystemExit, match="--steps-per-call must be >= 1"):
    _harness.repeated(_step, 0, 2)

"""DARTS hypergradients against independent references, in float64."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import config as config_lib
from dnas import supernet
from dnas.architects import darts

PRIMITIVES = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")
XI = 0.1


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def problem():
  """A 3-cell, 1-node supernet, two batches, and a state with a momentum buffer."""
  with jax.enable_x64(True):
    net = supernet.Supernet(
        in_channels=1, num_classes=3, C=2, layers=3, steps=1, multiplier=1,
        primitives=PRIMITIVES, alpha_init_scale=0.5, rngs=nnx.Rngs(0),
    )
    graphdef, weights, alphas, rest = supernet.split(net)
    as64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
    weights, alphas, rest = as64(weights), as64(alphas), as64(rest)
    keys = jax.random.split(jax.random.key(1), 5)
    train = (jax.random.normal(keys[0], (8, 6, 6, 1), jnp.float64),
             jax.random.randint(keys[1], (8,), 0, 3))
    val = (jax.random.normal(keys[2], (8, 6, 6, 1), jnp.float64),
           jax.random.randint(keys[3], (8,), 0, 3))
    config = config_lib.SearchConfig(
        primitives=PRIMITIVES, steps=1, multiplier=1, w_lr=XI, w_lr_min=XI,
        hypergradient="second_order",
    )
    architect = darts.Darts(graphdef, config, steps_per_epoch=10)
    state = architect.init(weights, alphas, rest)
    # A non-zero momentum buffer, so the virtual step's momentum term is exercised.
    buffers = jax.tree.map(
        lambda w: 0.1 * jax.random.normal(keys[4], w.shape, jnp.float64), weights
    )
    w_opt = list(state.w_opt)
    w_opt[2] = w_opt[2]._replace(trace=buffers)
    state = state._replace(w_opt=tuple(w_opt))
  return graphdef, config, state, train, val


def _hypergradient(problem, mode, fd_radius=0.01, **config_changes):
  graphdef, config, state, train, val = problem
  config = dataclasses.replace(config, hypergradient=mode, **config_changes)
  architect = darts.Darts(graphdef, config, steps_per_epoch=10, fd_radius=fd_radius)
  with jax.enable_x64(True):
    grads, *_ = jax.jit(architect.hypergradient)(state, train, val)
  return _flat(grads)


def test_exact_second_order_matches_numerical_derivative_of_unrolled_objective(problem):
  graphdef, config, state, train, val = problem
  architect = darts.Darts(graphdef, config, steps_per_epoch=10)
  exact = _hypergradient(problem, "second_order")
  with jax.enable_x64(True):
    leaves, treedef = jax.tree.flatten(state.alphas)

    @jax.jit
    def objective(flat_alphas, xi):
      """L_val(w - xi (m*buf + grad L_train(w, a) + wd*w), a), written out independently."""
      sizes = np.cumsum([0] + [l.size for l in leaves])
      alphas = jax.tree.unflatten(
          treedef,
          [flat_alphas[a:b].reshape(l.shape) for a, b, l in zip(sizes[:-1], sizes[1:], leaves)],
      )
      grads, _ = jax.grad(architect.loss, has_aux=True)(state.weights, alphas, state.rest, *train)
      buffers = state.w_opt[2].trace
      virtual = jax.tree.map(
          lambda w, g, m: w - xi * (config.w_momentum * m + g + config.w_weight_decay * w),
          state.weights, grads, buffers,
      )
      return architect.loss(virtual, alphas, state.rest, *val)[0]

    flat = jnp.asarray(_flat(state.alphas))
    h = 1e-6
    numeric = np.array([
        (objective(flat.at[i].add(h), XI) - objective(flat.at[i].add(-h), XI)) / (2 * h)
        for i in range(flat.size)
    ])
    # A second path to the same number: reverse mode through the virtual step
    # (the architect takes the mixed term forward-over-reverse), with the
    # architect's own xi (its schedule computes 0.1 in float32).
    reverse = np.asarray(jax.grad(objective)(flat, architect.weight_lr(state.step)))
  np.testing.assert_allclose(exact, numeric, rtol=1e-4, atol=1e-7)
  assert np.abs(exact).max() > 1e-3  # a real gradient, not all zeros
  np.testing.assert_allclose(exact, reverse, rtol=1e-9, atol=1e-13)


def test_exact_with_zero_xi_equals_first_order(problem):
  exact = _hypergradient(problem, "second_order", w_lr=0.0, w_lr_min=0.0)
  first = _hypergradient(problem, "first_order")
  np.testing.assert_array_equal(exact, first)


def test_second_order_differs_from_first_order(problem):
  exact = _hypergradient(problem, "second_order")
  first = _hypergradient(problem, "first_order")
  assert np.linalg.norm(exact - first) > 1e-3 * np.linalg.norm(exact)


def test_finite_difference_agrees_with_exact(problem):
  """Eq. 8 is a central difference: with a small epsilon it meets the exact value.

  At the paper's epsilon (0.01 / ||grad||) the approximation error depends on
  the curvature; on this tiny BatchNorm network it is large, which is why the
  exact mode exists.
  """
  exact = _hypergradient(problem, "second_order")
  approx = _hypergradient(problem, "finite_difference", fd_radius=1e-4)
  relative = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
  assert relative < 2e-3, relative


def test_cosine_learning_rate_matches_reference_schedule():
  config = config_lib.SearchConfig(epochs=50, w_lr=0.025, w_lr_min=0.001)
  architect = darts.Darts(None, config, steps_per_epoch=10)
  # CosineAnnealingLR(T_max=50, eta_min=0.001) at epochs 0, 25, 49.
  for epoch, expected in [(0, 0.025), (25, 0.013), (49, 0.001 + 0.024 * 0.5 * (1 + np.cos(np.pi * 49 / 50)))]:
    np.testing.assert_allclose(float(architect.weight_lr(epoch * 10 + 3)), expected, rtol=1e-6)

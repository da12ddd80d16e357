"""Relaxations: continuous architecture parameters -> edge weights.

Each relaxation is a pure function ``fn(alphas, *, temperature=1.0, key=None)``
mapping logits of shape (edges, ops) to mixing weights of the same shape. The
supernet applies one to its alphas once per forward pass and hands each edge
its row, so alphas shared by all cells of a kind are relaxed once.

  >>> weights = relaxations.RELAXATIONS['softmax'](alphas_normal)

``softmax`` is DARTS (Liu et al., 2019, eq. 2); ``gumbel_softmax`` is the
concrete relaxation used by GDAS/SNAS (Jang et al., 2017); ``sigmoid`` gives
independent gates as in Fair-DARTS (Chu et al., 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dnas.errors import UserError

__all__ = ["softmax", "gumbel_softmax", "sigmoid", "RELAXATIONS", "get"]


def softmax(alphas, *, temperature=1.0, key=None):
  """DARTS's relaxation: softmax over the candidate ops of each edge.

  Args:
    alphas: logits of shape (..., num_ops).
    temperature: divides the logits before the softmax.
    key: unused; accepted so every relaxation has one signature.

  Returns:
    Weights of the same shape, each row summing to one.
  """
  del key
  return jax.nn.softmax(alphas / temperature, axis=-1)


def gumbel_softmax(alphas, *, temperature=1.0, key=None):
  """Gumbel-softmax sample: softmax((alphas + Gumbel noise) / temperature).

  Args:
    alphas: logits of shape (..., num_ops).
    temperature: the concrete distribution's temperature.
    key: a PRNG key; required.

  Returns:
    One relaxed one-hot sample per edge.
  """
  if key is None:
    raise ValueError("gumbel_softmax needs a PRNG key: pass key=...")
  noise = jax.random.gumbel(key, alphas.shape, alphas.dtype)
  return jax.nn.softmax((alphas + noise) / temperature, axis=-1)


def sigmoid(alphas, *, temperature=1.0, key=None):
  """Independent sigmoid gates per op (weights do not sum to one)."""
  del key
  return jax.nn.sigmoid(alphas / temperature)


Relaxation = Callable[..., jnp.ndarray]
RELAXATIONS: dict[str, Relaxation] = {
    "softmax": softmax,
    "gumbel_softmax": gumbel_softmax,
    "sigmoid": sigmoid,
}


def get(name_or_fn: str | Relaxation) -> Relaxation:
  """Returns the relaxation registered under a name (or the callable given)."""
  if callable(name_or_fn):
    return name_or_fn
  if name_or_fn not in RELAXATIONS:
    raise UserError(
        f"unknown relaxation {name_or_fn!r}; choose one of {', '.join(RELAXATIONS)}"
    )
  return RELAXATIONS[name_or_fn]

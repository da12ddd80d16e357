"""DARTS's bilevel optimiser: alphas on validation data, weights on training data.

Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019. One search
step (Algorithm 1) is

1. update the alphas by descending grad_alpha L_val(w*(alpha), alpha), with
   w*(alpha) approximated by the current weights (``first_order``) or by one
   virtual SGD step w' = w - xi * grad_w L_train(w, alpha) (eq. 6-7);
2. update the weights by descending grad_w L_train(w, alpha).

The second-order hypergradient is computed two ways: ``second_order`` is
exact (eq. 7: the mixed second derivative times grad_w' L_val, as forward-mode
differentiation of the alpha gradient of the training loss, no finite
differences), and ``finite_difference`` is the paper's eq. 8 approximation,
kept for comparison. As in the reference code,
the virtual step is the weight optimiser's own step without clipping:
w' = w - xi * (momentum * buffer + grad_w L_train + weight_decay * w), with xi
the current weight learning rate.

The architect is a pair of pure functions like an optax transform:

  >>> architect = Darts(graphdef, config, steps_per_epoch=390)
  >>> state = architect.init(weights, alphas, rest, key=jax.random.key(0))
  >>> state, metrics = jax.jit(architect.step)(state, train_batch, val_batch)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dnas import config as config_lib
from dnas import supernet as supernet_lib

__all__ = ["Darts", "DartsState", "HYPERGRADIENTS", "cosine_lr"]

HYPERGRADIENTS = ("first_order", "second_order", "finite_difference")


class DartsState(NamedTuple):
  """Everything a DARTS search step reads and writes.

  Attributes:
    step: search steps done so far (int32 scalar).
    weights: the supernet's ``nnx.Param`` state.
    alphas: the supernet's ``ArchParam`` state.
    rest: BatchNorm statistics and other non-trainable state.
    w_opt: the weight optimiser's state.
    a_opt: the alpha optimiser's state.
  """

  step: jax.Array
  weights: Any
  alphas: Any
  rest: Any
  w_opt: Any
  a_opt: Any


def cosine_lr(epoch, *, lr, lr_min, epochs):
  """The reference's per-epoch cosine schedule (CosineAnnealingLR, eta_min)."""
  return lr_min + (lr - lr_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / epochs))


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits, labels):
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def _tree_dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@dataclasses.dataclass(frozen=True)
class Darts:
  """The DARTS architect for one supernet and config.

  Args:
    graphdef: the supernet's graph definition, from ``supernet.split``.
    config: a ``SearchConfig`` (optimiser fields, ``hypergradient``, ``epochs``).
    steps_per_epoch: search steps per epoch; the weight learning rate is
      annealed once per epoch, as in the reference.
  """

  graphdef: Any
  config: Any
  steps_per_epoch: int
  fd_radius: float = 0.01  # eq. 8's epsilon = fd_radius / ||grad_w' L_val||

  def __post_init__(self):
    if self.config.hypergradient not in HYPERGRADIENTS:
      raise ValueError(
          f"unknown hypergradient {self.config.hypergradient!r}; choose one of"
          f" {', '.join(HYPERGRADIENTS)}"
      )

  # Optimisers ------------------------------------------------------------

  def weight_lr(self, step):
    """The weight learning rate at a search step (cosine per epoch)."""
    c = self.config
    epoch = jnp.floor_divide(step, self.steps_per_epoch).astype(jnp.float32)
    return cosine_lr(
        epoch, lr=c.w_lr, lr_min=c.w_lr_min, epochs=config_lib.search_epochs(c)
    )

  @property
  def weight_optimizer(self) -> optax.GradientTransformation:
    """SGD with momentum, L2 weight decay and gradient clipping (reference order)."""
    c = self.config
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip),
        optax.add_decayed_weights(c.w_weight_decay),
        optax.trace(decay=c.w_momentum),
        optax.scale_by_schedule(lambda count: -self.weight_lr(count)),
    )

  @property
  def alpha_optimizer(self) -> optax.GradientTransformation:
    """Adam with L2 weight decay, betas (0.5, 0.999) by default."""
    c = self.config
    return optax.chain(
        optax.add_decayed_weights(c.a_weight_decay),
        optax.scale_by_adam(b1=c.a_beta1, b2=c.a_beta2, eps=1e-8),
        optax.scale(-c.a_lr),
    )

  def init(self, weights, alphas, rest) -> DartsState:
    """The initial state for the given supernet state."""
    return DartsState(
        step=jnp.zeros((), jnp.int32),
        weights=weights,
        alphas=alphas,
        rest=rest,
        w_opt=self.weight_optimizer.init(weights),
        a_opt=self.alpha_optimizer.init(alphas),
    )

  # Losses ----------------------------------------------------------------

  def loss(self, weights, alphas, rest, images, labels):
    """Cross-entropy of the supernet in training mode.

    Returns:
      ``(loss, (new_rest, logits))``: the updated BatchNorm statistics come
      back as an auxiliary output so the loss stays a pure function.
    """
    model = supernet_lib.merge(self.graphdef, weights, alphas, rest)
    logits = model(images)
    _, _, _, new_rest = supernet_lib.split(model)
    return _cross_entropy(logits, labels), (new_rest, logits)

  def predict(self, weights, alphas, rest, images):
    """Logits in eval mode (running BatchNorm statistics)."""
    model = supernet_lib.merge(self.graphdef, weights, alphas, rest)
    model.eval()
    return model(images)

  def _virtual_weights(self, state, alphas, images, labels, xi):
    """w' = w - xi * (momentum * buffer + grad_w L_train(w, alpha) + wd * w)."""
    c = self.config
    grads, _ = jax.grad(self.loss, has_aux=True)(
        state.weights, alphas, state.rest, images, labels
    )
    buffers = optax.tree_utils.tree_get(state.w_opt, "trace")
    return jax.tree.map(
        lambda w, g, m: w - xi * (c.w_momentum * m + g + c.w_weight_decay * w),
        state.weights,
        grads,
        buffers,
    )

  def hypergradient(self, state, train_batch, val_batch):
    """grad_alpha of the validation loss under the configured approximation.

    Args:
      state: the current ``DartsState``.
      train_batch: ``(images, labels)`` for the virtual step.
      val_batch: ``(images, labels)`` for the validation loss.

    Returns:
      ``(alpha_grads, val_loss, val_logits, new_rest)``.
    """
    mode = self.config.hypergradient
    (xt, yt), (xv, yv) = train_batch, val_batch
    if mode == "first_order":
      (val_loss, (new_rest, logits)), grads = jax.value_and_grad(
          self.loss, argnums=1, has_aux=True
      )(state.weights, state.alphas, state.rest, xv, yv)
      return grads, val_loss, logits, new_rest
    xi = self.weight_lr(state.step)
    virtual = jax.lax.stop_gradient(
        self._virtual_weights(state, state.alphas, xt, yt, xi)
    )
    (val_loss, (new_rest, logits)), (dw, da) = jax.value_and_grad(
        self.loss, argnums=(0, 1), has_aux=True
    )(virtual, state.alphas, state.rest, xv, yv)
    grad_alpha_train = jax.grad(self.loss, argnums=1, has_aux=True)
    if mode == "second_order":
      # d/da L_val(w'(a), a) = da - xi * (d^2 L_train / da dw) dw, and the
      # mixed term is the derivative of grad_a L_train(w + t dw, a) at t = 0:
      # forward mode over the reverse pass (eq. 7 without eq. 8's
      # difference quotient).
      _, mixed = jax.jvp(
          lambda w: grad_alpha_train(w, state.alphas, state.rest, xt, yt)[0],
          (state.weights,),
          (dw,),
      )
      grads = jax.tree.map(lambda g, m: g - xi * m, da, mixed)
      return grads, val_loss, logits, new_rest
    # finite_difference: DARTS eq. 8.
    eps = self.fd_radius / jnp.sqrt(_tree_dot(dw, dw))
    plus = jax.tree.map(lambda w, d: w + eps * d, state.weights, dw)
    minus = jax.tree.map(lambda w, d: w - eps * d, state.weights, dw)
    g_plus, _ = grad_alpha_train(plus, state.alphas, state.rest, xt, yt)
    g_minus, _ = grad_alpha_train(minus, state.alphas, state.rest, xt, yt)
    grads = jax.tree.map(
        lambda g, p, m: g - xi * (p - m) / (2 * eps), da, g_plus, g_minus
    )
    return grads, val_loss, logits, new_rest

  # The step --------------------------------------------------------------

  def step(self, state: DartsState, train_batch, val_batch):
    """One search step: architecture update, then weight update.

    Args:
      state: the current ``DartsState``.
      train_batch: ``(images, labels)`` from the weights' half of the data.
      val_batch: ``(images, labels)`` from the alphas' half.

    Returns:
      ``(new_state, metrics)`` with scalar metrics ``train_loss``,
      ``train_acc``, ``val_loss``, ``val_acc``, ``lr``.
    """
    alpha_grads, val_loss, val_logits, rest = self.hypergradient(
        state, train_batch, val_batch
    )
    updates, a_opt = self.alpha_optimizer.update(alpha_grads, state.a_opt, state.alphas)
    alphas = optax.apply_updates(state.alphas, updates)
    xt, yt = train_batch
    (train_loss, (rest, train_logits)), weight_grads = jax.value_and_grad(
        self.loss, has_aux=True
    )(state.weights, alphas, rest, xt, yt)
    lr = self.weight_lr(state.step)
    updates, w_opt = self.weight_optimizer.update(
        weight_grads, state.w_opt, state.weights
    )
    weights = optax.apply_updates(state.weights, updates)
    new_state = DartsState(
        step=state.step + 1,
        weights=weights,
        alphas=alphas,
        rest=rest,
        w_opt=w_opt,
        a_opt=a_opt,
    )
    metrics = {
        "train_loss": train_loss,
        "train_acc": _accuracy(train_logits, yt),
        "val_loss": val_loss,
        "val_acc": _accuracy(val_logits, val_batch[1]),
        "lr": lr,
    }
    return new_state, metrics

  def alphas_arrays(self, state: DartsState):
    """The raw alpha logits as ``(normal, reduce)`` arrays."""
    alphas = state.alphas
    return alphas["alphas_normal"].get_value(), alphas["alphas_reduce"].get_value()


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the last partial batch is dropped)."""
  return max(1, math.floor(num_examples / batch_size))

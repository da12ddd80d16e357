"""ENAS: an LSTM controller trained with REINFORCE over shared weights.

Pham et al., "Efficient Neural Architecture Search via Parameter Sharing",
ICML 2018, the micro (cell) search, over the DARTS node structure: each of
a cell's ``steps`` intermediate nodes takes two inputs among the cell inputs
and earlier nodes and applies one op to each, and the cell outputs the
concatenation of its last ``multiplier`` nodes. The candidate ops are the
space's primitives without ``none``.

An epoch alternates two phases, as in the paper:

1. the shared weights (the ``Supernet``'s candidate ops; only the sampled
   path runs, see ``Supernet.sampled``) take one SGD step per training batch,
   each on a freshly sampled architecture;
2. the controller takes ``enas_controller_steps`` REINFORCE steps on
   validation batches, each averaging the gradients of
   ``enas_num_aggregate`` sampled architectures (ENAS: 30 steps of 10): reward = validation accuracy of the sampled child
   (plus ``enas_entropy_weight`` times the sample's entropy, as the ENAS
   code), a moving-average baseline (decay ``enas_baseline_decay``), logits
   ``tanh_constant * tanh(logits / temperature)`` (ops: ``tanh_constant /
   op_tanh_reduce``), Adam.

Both phases are one compiled program each over many steps; architectures are
traced arrays, so no architecture ever triggers a new trace. At the end
``enas_derive_samples`` architectures are sampled and scored on the same
validation batches with the shared weights, and the best is written as
``genotype.json``; the controller's greedy decode goes to
``genotype_greedy.json``. The same number of uniformly random architectures
is scored on the same batches, so ``result.json`` shows what the controller
learned (``controller_mean_score`` against ``uniform_mean_score``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from dnas import config as config_lib
from dnas.errors import UserError

__all__ = [
    "Controller",
    "EnasState",
    "arch_to_genotype",
    "uniform_arch",
    "run_enas_search",
    "op_ids",
]

# ENAS micro search: controller_op_tanh_reduce=2.5.
OP_TANH_REDUCE = 2.5


def op_ids(primitives) -> list[int]:
  """Positions of the ops ENAS samples: every primitive except ``none``."""
  return [i for i, p in enumerate(primitives) if p != "none"]


class Controller(nnx.Module):
  """The ENAS micro controller: one LSTM samples both cells, node by node.

  For each node, two input indices are chosen by attention over the
  anchors of the earlier states, then two ops by a softmax over the
  candidate ops; the LSTM is fed the chosen anchor or op embedding. The
  normal cell is sampled first, then the reduction cell.

  Args:
    num_ops: candidate ops (the space's primitives without ``none``).
    steps: intermediate nodes per cell.
    lstm_size: LSTM width (64 in ENAS's micro search).
    rngs: initialisation keys.
  """

  def __init__(self, *, num_ops: int, steps: int, lstm_size: int = 64, rngs: nnx.Rngs):
    self.num_ops = num_ops
    self.steps = steps
    self.lstm_size = lstm_size
    init = jax.nn.initializers.uniform(0.2)
    shift = lambda key, shape: init(key, shape) - 0.1  # U(-0.1, 0.1) as ENAS
    self.lstm = nnx.LSTMCell(lstm_size, lstm_size, rngs=rngs)
    self.g_emb = nnx.Param(shift(rngs.params(), (lstm_size,)))
    self.op_emb = nnx.Param(shift(rngs.params(), (num_ops, lstm_size)))
    self.w_attn_1 = nnx.Param(shift(rngs.params(), (lstm_size, lstm_size)))
    self.w_attn_2 = nnx.Param(shift(rngs.params(), (lstm_size, lstm_size)))
    self.v_attn = nnx.Param(shift(rngs.params(), (lstm_size,)))
    self.w_soft = nnx.Param(shift(rngs.params(), (lstm_size, num_ops)))
    self.b_soft = nnx.Param(jnp.zeros((num_ops,)))

  def __call__(
      self,
      key: jax.Array,
      *,
      temperature,
      tanh_constant,
      greedy: bool = False,
  ):
    """Samples an architecture.

    Args:
      key: PRNG key.
      temperature, tanh_constant: logits become
        ``tanh_constant * tanh(logits / temperature)``; ops use
        ``tanh_constant / 2.5``.
      greedy: take the most likely choice everywhere.

    Returns:
      ``(arch, log_prob, entropy)``: ``arch`` int32 of shape (2, steps, 4),
      normal then reduction cell, rows ``(input_1, input_2, op_1, op_2)``;
      the sample's total log-probability and entropy.
    """
    h = jnp.zeros((self.lstm_size,))
    carry = (h, h)
    log_prob = jnp.zeros(())
    entropy = jnp.zeros(())
    keys = iter(jax.random.split(key, 2 * self.steps * 4))
    g = self.g_emb.get_value()
    w1, w2 = self.w_attn_1.get_value(), self.w_attn_2.get_value()
    v = self.v_attn.get_value()
    op_emb = self.op_emb.get_value()

    def choose(logits, tanh_c):
      nonlocal log_prob, entropy
      logits = tanh_c * jnp.tanh(logits / temperature)
      logp = jax.nn.log_softmax(logits)
      if greedy:
        index = jnp.argmax(logits)
      else:
        index = jax.random.categorical(next(keys), logits)
      log_prob = log_prob + logp[index]
      entropy = entropy - jnp.sum(jnp.exp(logp) * logp)
      return index

    cells = []
    for _ in range(2):
      anchors, anchors_w1 = [], []
      inputs = g
      for _ in range(2):  # the cell inputs
        carry, out = self.lstm(carry, inputs)
        anchors.append(jnp.zeros_like(out))
        anchors_w1.append(out @ w1)
      rows = []
      for _ in range(self.steps):
        picks = []
        for _ in range(2):
          carry, out = self.lstm(carry, inputs)
          query = jnp.tanh(jnp.stack(anchors_w1) + out @ w2)
          index = choose(query @ v, tanh_constant)
          picks.append(index)
          inputs = jnp.stack(anchors)[index]
        for _ in range(2):
          carry, out = self.lstm(carry, inputs)
          op = choose(out @ self.w_soft.get_value() + self.b_soft.get_value(),
                      tanh_constant / OP_TANH_REDUCE)
          picks.append(op)
          inputs = op_emb[op]
        carry, out = self.lstm(carry, inputs)
        anchors.append(out)
        anchors_w1.append(out @ w1)
        inputs = g
        rows.append(jnp.stack(picks).astype(jnp.int32))
      cells.append(jnp.stack(rows))
    return jnp.stack(cells), log_prob, entropy


def uniform_arch(key, *, steps: int, num_ops: int):
  """A uniformly random architecture (2, steps, 4), independent of any controller."""
  rows = []
  for cell_key in jax.random.split(key, 2):
    node_keys = jax.random.split(cell_key, steps)
    cell = []
    for i in range(steps):
      k_in, k_op = jax.random.split(node_keys[i])
      inputs = jax.random.randint(k_in, (2,), 0, i + 2)
      ops = jax.random.randint(k_op, (2,), 0, num_ops)
      cell.append(jnp.concatenate([inputs, ops]).astype(jnp.int32))
    rows.append(jnp.stack(cell))
  return jnp.stack(rows)


def arch_to_genotype(arch, primitives, *, steps: int, multiplier: int):
  """The ``Genotype`` of an architecture array (2, steps, 4)."""
  from dnas import genotype as genotype_lib

  arch = np.asarray(arch)
  ids = op_ids(primitives)
  concat = tuple(range(2 + steps - multiplier, steps + 2))
  cells = []
  for cell in arch:
    edges = []
    for row in cell:
      edges.append((primitives[ids[int(row[2])]], int(row[0])))
      edges.append((primitives[ids[int(row[3])]], int(row[1])))
    cells.append(tuple(edges))
  return genotype_lib.Genotype(
      normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=concat
  ).validate()


class EnasState(NamedTuple):
  """Everything an ENAS search reads and writes.

  Attributes:
    step: child steps done.
    weights, rest: the shared weights and BatchNorm statistics.
    w_opt: the shared weights' optimiser state.
    controller: the controller's parameters.
    c_opt: the controller's optimiser state.
    baseline: the reward's moving average.
    c_step: controller steps done.
  """

  step: Any
  weights: Any
  rest: Any
  w_opt: Any
  controller: Any
  c_opt: Any
  baseline: Any
  c_step: Any


def _silent(*args, **kwargs):
  del args, kwargs


def run_enas_search(config: config_lib.SearchConfig, workdir: str, *, progress=True, log=print):
  """Runs (or resumes, or returns) an ENAS search; see the module docstring.

  Args:
    config: a ``SearchConfig`` with ``strategy='enas'`` (its ``enas_*``
      fields, the weight optimiser fields and the supernet shape).
    workdir: output directory; an existing checkpoint there is resumed.
    progress: show a progress bar on stderr.
    log: where one-line status messages go.

  Returns:
    A ``search.SearchResult`` (``alphas_*`` hold the controller's greedy
    architecture arrays, normal and reduction, shape (steps, 4)).
  """
  import optax
  from tqdm import tqdm

  from dnas import checkpointing
  from dnas import data as data_lib
  from dnas import distributed
  from dnas import genotype as genotype_lib
  from dnas import search as search_lib
  from dnas import supernet as supernet_lib
  from dnas.architects import darts

  ids = op_ids(config.primitives)
  if not ids:
    raise UserError(
        "ENAS samples among the primitives other than 'none', and none is left;"
        " add ops to primitives="
    )
  for name in ("enas_controller_steps", "enas_num_aggregate", "enas_derive_samples",
               "enas_lstm_size"):
    if getattr(config, name) < 1:
      raise UserError(f"{name} must be >= 1, got {getattr(config, name)}")
  if config.enas_temperature <= 0 or config.enas_tanh_constant <= 0:
    raise UserError("enas_temperature and enas_tanh_constant must be > 0")
  main = distributed.is_main_process()
  if not main:
    progress, log = False, _silent
  workdir = search_lib.prepare_workdir(workdir)
  config_dict = config_lib.to_dict(config)
  done = search_lib.finished_result(workdir)
  if done is not None and done.get("config") == config_dict:
    log(f"search in {workdir} already finished; not redoing it")
    greedy = np.asarray(done["greedy_arch"], np.int32)
    return search_lib.SearchResult(
        genotype=genotype_lib.load(os.path.join(workdir, "genotype.json")),
        alphas_normal=greedy[0], alphas_reduce=greedy[1], workdir=workdir,
        metrics=done.get("metrics", {}),
    )
  if main:
    search_lib.check_run_config(workdir, config_dict, "search")
  # Every candidate's branch is compiled while a step runs only one path, so
  # compile time dominates the digits run; the backend's default (shift_vjp
  # on CPU) compiles fastest there too: 58 s against 179 s for native.
  search_lib._set_depthwise(config)

  train = data_lib.load(config.dataset, "train", data_dir=config.data_dir)
  weights_half, alphas_half = data_lib.search_split(train, config.train_portion)
  batch = config.batch_size
  mesh = distributed.data_mesh()
  distributed.check_batch(batch, mesh)
  n_train, n_val = len(weights_half.labels), len(alphas_half.labels)
  if min(n_train, n_val) < batch:
    raise UserError(
        f"batch_size={batch} exceeds a search half of {min(n_train, n_val)}"
        f" examples of {train.name}; use a smaller batch_size"
    )
  spe = n_train // batch
  if config.max_steps_per_epoch:
    spe = min(spe, config.max_steps_per_epoch)
  k = search_lib._largest_divisor_at_most(spe, config.steps_per_call)
  c_steps = config.enas_controller_steps

  image_shape = train.images.shape[1:]
  model = supernet_lib.Supernet(
      in_channels=image_shape[-1], num_classes=train.num_classes,
      C=config.init_channels, layers=config.layers, steps=config.steps,
      multiplier=config.multiplier, stem_multiplier=config.stem_multiplier,
      primitives=config.primitives, alpha_init_scale=0.0, rngs=nnx.Rngs(config.seed),
  )
  graphdef, weights, arch_params, rest = supernet_lib.split(model)
  controller = Controller(
      num_ops=len(ids), steps=config.steps, lstm_size=config.enas_lstm_size,
      rngs=nnx.Rngs(config.seed + 2),
  )
  c_graphdef, c_params = nnx.split(controller)
  # The child's weights: the DARTS weight optimiser (SGD, momentum, decay, clip,
  # cosine per epoch) and its schedule.
  weight_rules = darts.Darts(graphdef, config, steps_per_epoch=spe)
  w_optimizer = weight_rules.weight_optimizer
  # ENAS's controller Adam: beta1 = 0, epsilon = 1e-3 (its get_train_ops).
  c_optimizer = optax.adam(config.enas_lr, b1=0.0, b2=0.999, eps=1e-3)
  state = EnasState(
      step=jnp.zeros((), jnp.int32), weights=weights, rest=rest,
      w_opt=w_optimizer.init(weights), controller=c_params,
      c_opt=c_optimizer.init(c_params), baseline=jnp.zeros(()),
      c_step=jnp.zeros((), jnp.int32),
  )
  base_key = jax.random.PRNGKey(config.seed + 1)
  temperature = jnp.float32(config.enas_temperature)
  tanh_c = jnp.float32(config.enas_tanh_constant)

  def sample(c_params, key, **kw):
    ctrl = nnx.merge(c_graphdef, c_params)
    return ctrl(key, temperature=temperature, tanh_constant=tanh_c, **kw)

  def child_logits(weights, rest, images, arch):
    net = supernet_lib.merge(graphdef, weights, arch_params, rest)
    logits = net.sampled(images, arch[0], arch[1], ids)
    _, _, _, new_rest = supernet_lib.split(net)
    return logits, new_rest

  def child_loss(weights, rest, images, labels, arch):
    logits, new_rest = child_logits(weights, rest, images, arch)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (new_rest, logits)

  def reward_of(state, images, labels, arch):
    # As ENAS: the child in training mode (batch statistics), nothing updated.
    logits, _ = child_logits(state.weights, state.rest, images, arch)
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))

  preprocess = search_lib.make_preprocess(config, weights_half.mean, weights_half.std)
  batch_sharding = distributed.batch_sharded(mesh)
  shard = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)
  traces = {"child": 0, "controller": 0}

  def child_step(state: EnasState, images, labels, arch):
    """One shared-weight SGD step on ``arch`` (an int array input)."""
    (loss, (rest, logits)), grads = jax.value_and_grad(child_loss, has_aux=True)(
        state.weights, state.rest, images, labels, arch
    )
    updates, w_opt = w_optimizer.update(grads, state.w_opt, state.weights)
    weights = optax.apply_updates(state.weights, updates)
    acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    new = state._replace(step=state.step + 1, weights=weights, rest=rest, w_opt=w_opt)
    return new, {"child_loss": loss, "child_acc": acc, "lr": weight_rules.weight_lr(state.step)}

  def child_chunk(state, key, images, labels, idx):
    traces["child"] += 1

    def body(state, idx):
      k_arch, k_aug = jax.random.split(jax.random.fold_in(key, state.step))
      arch, _, _ = sample(state.controller, k_arch)
      x, y = shard(preprocess(images[idx], k_aug)), shard(labels[idx])
      return child_step(state, x, y, arch)

    return jax.lax.scan(body, state, idx)

  def controller_step(state: EnasState, images, labels, key):
    """One REINFORCE update from ``enas_num_aggregate`` samples (ENAS: 10)."""

    def loss_fn(c_params, baseline, sample_key):
      arch, log_prob, entropy = sample(c_params, sample_key)
      reward = reward_of(state, images, labels, jax.lax.stop_gradient(arch))
      reward = reward + config.enas_entropy_weight * jax.lax.stop_gradient(entropy)
      baseline = baseline - (1 - config.enas_baseline_decay) * (baseline - reward)
      loss = -log_prob * jax.lax.stop_gradient(reward - baseline)
      return loss, (reward, baseline, entropy)

    def one_sample(carry, sample_key):
      baseline, grad_sum = carry
      (loss, (reward, baseline, entropy)), grads = jax.value_and_grad(
          loss_fn, has_aux=True
      )(state.controller, baseline, sample_key)
      grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      return (baseline, grad_sum), (loss, reward, entropy)

    zeros = jax.tree.map(jnp.zeros_like, state.controller)
    n = config.enas_num_aggregate
    (baseline, grad_sum), (loss, reward, entropy) = jax.lax.scan(
        one_sample, (state.baseline, zeros), jax.random.split(key, n)
    )
    grads = jax.tree.map(lambda g: g / n, grad_sum)
    updates, c_opt = c_optimizer.update(grads, state.c_opt, state.controller)
    new = state._replace(
        controller=optax.apply_updates(state.controller, updates), c_opt=c_opt,
        baseline=baseline, c_step=state.c_step + 1,
    )
    return new, {"reward": jnp.mean(reward), "baseline": baseline,
                 "entropy": jnp.mean(entropy), "controller_loss": jnp.mean(loss)}

  def controller_chunk(state, key, images, labels, idx):
    traces["controller"] += 1

    def body(state, idx):
      k = jax.random.fold_in(jax.random.fold_in(key, 1 << 20), state.c_step)
      x = shard(data_lib.normalize(images[idx], weights_half.mean, weights_half.std))
      return controller_step(state, x.astype(preprocess_dtype), shard(labels[idx]), k)

    return jax.lax.scan(body, state, idx)

  preprocess_dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32

  def score(state, images, labels, arch):
    x = data_lib.normalize(images, weights_half.mean, weights_half.std).astype(preprocess_dtype)
    return reward_of(state, x, labels, arch)

  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
  )
  resumed_from = ckpt.latest_step()
  start_epoch, last_epoch = 0, None
  if resumed_from is not None:
    state, meta = ckpt.restore(resumed_from, template=state)
    last_epoch = int(meta["epoch"])
    start_epoch = last_epoch + 1
    log(f"resuming {workdir} from step {resumed_from} (epoch {start_epoch + 1} of {config.epochs})")
  metrics_log = search_lib.MetricsLog(workdir, keep_through_epoch=last_epoch, enabled=main)

  state = distributed.put_replicated(state, mesh)
  base_key = distributed.put_replicated(base_key, mesh)
  train_images, train_labels, val_images, val_labels = distributed.put_replicated(
      (weights_half.images, weights_half.labels, alphas_half.images, alphas_half.labels), mesh
  )
  child_jit = jax.jit(child_chunk, donate_argnums=(0,))
  controller_jit = jax.jit(controller_chunk, donate_argnums=(0,))
  greedy_jit = jax.jit(lambda c: sample(c, jax.random.PRNGKey(0), greedy=True)[0])
  sample_jit = jax.jit(lambda c, key: sample(c, key)[0])
  score_jit = jax.jit(score)
  compiled_child = compiled_ctrl = None
  compile_s = 0.0
  bar = tqdm(
      total=config.epochs * (spe + c_steps), initial=start_epoch * (spe + c_steps),
      unit="step", disable=not progress, dynamic_ncols=True, desc="enas",
  )
  record: dict[str, Any] = {}
  started = time.time()
  try:
    for epoch in range(start_epoch, config.epochs):
      epoch_start = time.time()
      order_t = data_lib.epoch_permutation(n_train, epoch, seed=config.seed)
      idx_t = order_t[: spe * batch].reshape(spe // k, k, batch)
      sums: dict[str, float] = {}
      for c in range(spe // k):
        args = (state, base_key, train_images, train_labels,
                distributed.put_replicated(idx_t[c], mesh))
        if compiled_child is None:
          t0 = time.time()
          bar.set_postfix_str("compiling the child step ...")
          compiled_child = child_jit.lower(*args).compile()
          compile_s += time.time() - t0
        t0 = time.time()
        state, metrics = compiled_child(*args)
        metrics = jax.device_get(metrics)
        dt = time.time() - t0
        _check_finite(metrics, epoch, state, ckpt)
        for name, values in metrics.items():
          sums[name] = sums.get(name, 0.0) + float(np.sum(values))
        bar.update(k)
        bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}",
                        loss=f"{sums['child_loss'] / ((c + 1) * k):.3f}",
                        acc=f"{sums['child_acc'] / ((c + 1) * k):.3f}",
                        img_s=f"{batch * k / max(dt, 1e-9):.1f}")
      # Controller phase: validation batches in a per-epoch order.
      order_v = data_lib.epoch_permutation(n_val, epoch, seed=config.seed + 1)
      reps = -(-c_steps * batch // n_val)
      order_v = np.concatenate([order_v] * reps)[: c_steps * batch].reshape(c_steps, batch)
      args = (state, base_key, val_images, val_labels, distributed.put_replicated(order_v, mesh))
      if compiled_ctrl is None:
        t0 = time.time()
        bar.set_postfix_str("compiling the controller step ...")
        compiled_ctrl = controller_jit.lower(*args).compile()
        compile_s += time.time() - t0
      state, c_metrics = compiled_ctrl(*args)
      c_metrics = jax.device_get(c_metrics)
      _check_finite(c_metrics, epoch, state, ckpt)
      bar.update(c_steps)
      greedy = np.asarray(jax.device_get(greedy_jit(state.controller)))
      geno = arch_to_genotype(greedy, config.primitives, steps=config.steps,
                              multiplier=config.multiplier)
      epoch_s = time.time() - epoch_start
      record = {
          "epoch": epoch,
          "step": int(state.step),
          **{name: value / spe for name, value in sums.items()},
          "reward_mean": float(np.mean(c_metrics["reward"])),
          "baseline": float(c_metrics["baseline"][-1]),
          "entropy": float(np.mean(c_metrics["entropy"])),
          "controller_loss": float(np.mean(c_metrics["controller_loss"])),
          "epoch_s": epoch_s,
          "img_per_s": batch * (spe + c_steps) / max(epoch_s, 1e-9),
          "genotype": geno.to_dict(),
          "greedy_arch": greedy.tolist(),
      }
      metrics_log.write(record, int(state.step))
      if progress:
        bar.write(f"epoch {epoch + 1}/{config.epochs}: child_acc {record['child_acc']:.3f}"
                  f" reward {record['reward_mean']:.3f} baseline {record['baseline']:.3f}"
                  f" entropy {record['entropy']:.2f}")
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs:
        ckpt.save(int(state.step), state,
                  {"epoch": epoch, "fingerprint": search_lib._fingerprint(config_dict)})
  finally:
    bar.close()
    metrics_log.close()

  # Derivation: sample, score every sample on the same validation batches.
  n_score = max(1, min(4, n_val // batch))
  order = data_lib.epoch_permutation(n_val, 0, seed=config.seed + 2)[: n_score * batch]
  derive_key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 3), 0)
  candidates, scores = [], []
  for i in range(config.enas_derive_samples):
    arch = sample_jit(state.controller, jax.random.fold_in(derive_key, i))
    candidates.append(np.asarray(jax.device_get(arch)))
  for arch in candidates:
    accs = [
        float(score_jit(state, *distributed.put_replicated(
            (alphas_half.images[idx], alphas_half.labels[idx]), mesh), arch))
        for idx in order.reshape(n_score, batch)
    ]
    scores.append(float(np.mean(accs)))
  # The same number of uniformly random architectures on the same batches:
  # what the controller's training bought.
  uniform_scores = []
  uniform_key = jax.random.PRNGKey(config.seed + 4)
  for i in range(config.enas_derive_samples):
    arch = uniform_arch(jax.random.fold_in(uniform_key, i), steps=config.steps, num_ops=len(ids))
    accs = [
        float(score_jit(state, *distributed.put_replicated(
            (alphas_half.images[idx], alphas_half.labels[idx]), mesh), arch))
        for idx in order.reshape(n_score, batch)
    ]
    uniform_scores.append(float(np.mean(accs)))
  best = int(np.argmax(scores))
  greedy = np.asarray(jax.device_get(greedy_jit(state.controller)))
  geno = arch_to_genotype(candidates[best], config.primitives, steps=config.steps,
                          multiplier=config.multiplier)
  greedy_geno = arch_to_genotype(greedy, config.primitives, steps=config.steps,
                                 multiplier=config.multiplier)
  final_metrics = {k: v for k, v in record.items() if k not in ("greedy_arch",)}
  if not final_metrics and metrics_log.records:
    final_metrics = {k: v for k, v in metrics_log.records[-1].items() if k != "greedy_arch"}
  final_metrics["derived_score"] = scores[best]
  final_metrics["controller_mean_score"] = float(np.mean(scores))
  final_metrics["uniform_mean_score"] = float(np.mean(uniform_scores))
  final_metrics["val_acc_eval"] = scores[best]
  if main:
    geno.save(os.path.join(workdir, "genotype.json"))
    greedy_geno.save(os.path.join(workdir, "genotype_greedy.json"))
    search_lib._save_npz_atomic(
        os.path.join(workdir, "architectures.npz"), sampled=np.stack(candidates),
        scores=np.asarray(scores, np.float32), greedy=greedy, best=np.int32(best),
        uniform_scores=np.asarray(uniform_scores, np.float32),
    )
    search_lib._write_json_atomic(
        os.path.join(workdir, "result.json"),
        {
            "config": config_dict,
            "genotype": geno.to_dict(),
            "greedy_genotype": greedy_geno.to_dict(),
            "greedy_arch": greedy.tolist(),
            "best_arch": candidates[best].tolist(),
            "derive_scores": scores,
            "uniform_scores": uniform_scores,
            "metrics": final_metrics,
            "steps": int(state.step),
            "controller_steps": int(state.c_step),
            "compile_s": compile_s,
            "traces": dict(traces),
            "wall_s": time.time() - started,
            "resumed_from": resumed_from,
            "devices": int(mesh.devices.size),
            "processes": jax.process_count(),
        },
    )
  ckpt.close()
  return search_lib.SearchResult(
      genotype=geno, alphas_normal=greedy[0], alphas_reduce=greedy[1], workdir=workdir,
      metrics=final_metrics, resumed_from=resumed_from,
  )


def _check_finite(metrics, epoch, state, ckpt) -> None:
  if all(np.all(np.isfinite(v)) for v in metrics.values()):
    return
  last = ckpt.latest_step()
  kept = (f"the last good checkpoint (step {last}) is kept" if last is not None
          else "no checkpoint was written")
  raise UserError(
      f"the loss became NaN or inf at epoch {epoch + 1}, step {int(state.step)};"
      f" {kept} in {ckpt.directory}; lower w_lr or enas_lr and use a new --workdir"
  )

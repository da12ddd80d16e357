"""The training library: ``run_train(config, workdir, genotype)``.

Trains the standalone final network (``dnas.network``) of any genotype with
the DARTS evaluation recipe (Liu et al. 2019, Sec. 3.2 and A.2; the
reference ``train.py`` and ``train_imagenet.py``): SGD with momentum, L2
weight decay and gradient clipping, a per-epoch cosine (or exponential)
learning rate, drop-path ramped linearly from 0, an auxiliary head, cutout
and label smoothing. Each epoch is evaluated on the test split, as the
reference does. One run writes into its workdir:

- ``config.json``: the resolved config and the genotype (a rerun must match);
- ``genotype.json``: the cell being trained;
- ``metrics.jsonl`` and TensorBoard event files (``tb/``), one record per epoch;
- ``checkpoints/``: orbax checkpoints (weights, BatchNorm statistics,
  optimiser state, step); a rerun resumes from the newest;
- at the end ``params.npz`` (the trained variables, ``load_model`` reads
  them back into a network) and ``result.json`` with the test accuracy.

  >>> from dnas import config, train
  >>> result = train.run_train(config.TrainConfig(epochs=2), 'runs/t', 'DARTS_V2')
  >>> result.test_acc
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, NamedTuple

import numpy as np

from dnas import config as config_lib
from dnas import search as search_lib
from dnas.errors import UserError

__all__ = ["TrainResult", "TrainState", "run_train", "resolve_config", "load_model", "learning_rate"]

LR_SCHEDULES = ("cosine", "exponential")
# Datasets whose labels change under a horizontal flip.
_NO_FLIP = ("digits", "mnist", "fashion_mnist", "svhn", "svhn_cropped")


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished training run produced.

  Attributes:
    test_acc: top-1 accuracy of the final network on the test split.
    workdir: where the outputs are.
    metrics: the last epoch's metrics.
    config: the resolved ``TrainConfig`` (no None fields left).
    genotype: the trained ``Genotype``.
    resumed_from: the step a checkpoint was restored at, or None.
  """

  test_acc: float
  workdir: str
  metrics: dict[str, Any]
  config: config_lib.TrainConfig
  genotype: Any
  resumed_from: int | None = None


class TrainState(NamedTuple):
  """Everything a training step reads and writes.

  Attributes:
    step: optimiser steps done (int32 scalar).
    params: the network's ``nnx.Param`` state.
    rest: BatchNorm running statistics.
    opt: the optimiser state.
  """

  step: Any
  params: Any
  rest: Any
  opt: Any


def resolve_config(config: config_lib.TrainConfig, *, dataset: str, image_size: int):
  """Fills the dataset-dependent fields left at None.

  Network size comes from ``network.DATASETS`` (36 channels and 20 cells for
  CIFAR, 48 and 14 for ImageNet, 16 and 8 for digits and MNIST). Epochs: 600
  (CIFAR, the paper), 250 (ImageNet), 15 for the embedded digits. The crop
  padding (4 px) and cutout (16 px) are the paper's on 32-pixel images and
  scale with the image size (1 and 4 px on 8x8 digits); flips are on except
  for digit datasets.

  Args:
    config: a ``TrainConfig``.
    dataset: the dataset's name (``'digits'`` for the embedded one).
    image_size: the images' height.

  Returns:
    The config with every field set.
  """
  from dnas import network

  net_defaults = network.DATASETS.get(dataset, network.DATASETS["cifar10"])[1]
  scale = image_size / 32
  if dataset == "imagenet":
    epochs, crop, cutout = 250, 0, 0
  else:
    epochs = 15 if dataset == "digits" else 600
    crop, cutout = round(4 * scale), round(16 * scale)
  updates = dict(
      init_channels=net_defaults["C"],
      layers=net_defaults["layers"],
      epochs=epochs,
      crop_padding=crop,
      cutout=cutout,
      flip=dataset not in _NO_FLIP,
  )
  return dataclasses.replace(
      config,
      **{k: v for k, v in updates.items() if getattr(config, k) is None},
  )


def validate_config(config: config_lib.TrainConfig) -> None:
  """Checks a resolved training config; raises ``UserError`` naming the field."""
  if config.lr_schedule not in LR_SCHEDULES:
    raise UserError(
        f"lr_schedule={config.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}"
    )
  search_lib.validate_execution(config)
  for name in ("epochs", "batch_size", "init_channels", "layers", "steps_per_call",
               "checkpoint_every_epochs", "keep_checkpoints"):
    if getattr(config, name) < 1:
      raise UserError(f"{name} must be >= 1, got {getattr(config, name)}")
  if not 0.0 <= config.drop_path_prob < 1.0:
    raise UserError(f"drop_path_prob must be in [0, 1), got {config.drop_path_prob}")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise UserError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if config.cutout < 0 or config.crop_padding < 0:
    raise UserError("cutout and crop_padding must be >= 0")


def learning_rate(epoch, config: config_lib.TrainConfig):
  """The learning rate of an epoch (the reference steps its scheduler per epoch).

  ``cosine``: ``lr_min + (lr - lr_min) * (1 + cos(pi * epoch / epochs)) / 2``
  (``CosineAnnealingLR``); ``exponential``: ``lr * lr_decay ** epoch``
  (``StepLR(step_size=1, gamma=0.97)`` in the ImageNet recipe).
  """
  import jax.numpy as jnp

  epoch = jnp.asarray(epoch, jnp.float32)
  if config.lr_schedule == "exponential":
    return config.lr * jnp.power(config.lr_decay, epoch)
  return config.lr_min + (config.lr - config.lr_min) * 0.5 * (
      1.0 + jnp.cos(jnp.pi * epoch / config.epochs)
  )


def _optimizer(config, steps_per_epoch: int):
  import jax.numpy as jnp
  import optax

  def schedule(count):
    return -learning_rate(jnp.floor_divide(count, steps_per_epoch), config)

  # torch's SGD order: clip the gradient, add weight decay, momentum, step.
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.add_decayed_weights(config.weight_decay),
      optax.trace(decay=config.momentum),
      optax.scale_by_schedule(schedule),
  )


def _build(genotype, config, *, dataset: str, num_classes: int, image_shape):
  from flax import nnx

  from dnas import network

  key = dataset if dataset in network.DATASETS else "cifar10"
  return network.build_network(
      genotype,
      key,
      C=config.init_channels,
      layers=config.layers,
      num_classes=num_classes,
      auxiliary=config.auxiliary,
      in_channels=image_shape[-1],
      image_size=image_shape[0],
      rngs=nnx.Rngs(params=config.seed),
  )


def _split(model):
  from flax import nnx

  return nnx.split(model, nnx.Param, ...)


def _flat_named(tree) -> dict[str, np.ndarray]:
  import jax

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def load_model(workdir: str):
  """The trained network of a finished ``run_train``, in eval mode.

  Args:
    workdir: the run's workdir (holds ``result.json`` and ``params.npz``).

  Returns:
    A ``NetworkCIFAR``/``NetworkImageNet`` with the trained weights and
    BatchNorm statistics; call it as ``logits, _ = model(images)`` on
    normalized NHWC images.

  Example:
    >>> model = load_model('runs/train')
  """
  import jax
  from flax import nnx

  from dnas import genotype as genotype_lib

  done = search_lib.finished_result(workdir)
  if done is None:
    raise UserError(f"{workdir!r} holds no finished training run (no result.json)")
  config = config_lib.from_dict(config_lib.TrainConfig, done["config"])
  geno = genotype_lib.Genotype.from_dict(done["genotype"])
  model = _build(
      geno, config, dataset=done["dataset"], num_classes=done["num_classes"],
      image_shape=tuple(done["image_shape"]),
  )
  graphdef, params, rest = _split(model)
  with np.load(os.path.join(workdir, "params.npz")) as stored:
    arrays = dict(stored)
  tree = (params, rest)
  paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
  missing = [jax.tree_util.keystr(p) for p, _ in paths if jax.tree_util.keystr(p) not in arrays]
  if missing:
    raise UserError(
        f"{workdir}/params.npz does not match the network ({len(missing)} arrays"
        " missing); was it written by another version?"
    )
  leaves = [arrays[jax.tree_util.keystr(p)] for p, _ in paths]
  params, rest = jax.tree_util.tree_unflatten(treedef, leaves)
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  return model


def _check_genotype(workdir: str, geno) -> None:
  """Refuses a workdir that trained another genotype (nothing is touched)."""
  from dnas import genotype as genotype_lib

  path = os.path.join(workdir, "genotype.json")
  if not os.path.exists(path):
    return
  try:
    previous = genotype_lib.Genotype.load(path)
  except UserError:
    raise UserError(f"{path} is unreadable; use a new --workdir (nothing was changed)") from None
  if previous != geno:
    raise UserError(
        f"workdir {workdir!r} holds a training run of a different genotype"
        f" ({path}); use a new --workdir (nothing was changed)"
    )


def run_train(
    config: config_lib.TrainConfig,
    workdir: str,
    genotype=None,
    *,
    progress: bool = True,
    log=print,
) -> TrainResult:
  """Trains (or resumes, or returns) the final network of ``genotype``.

  Args:
    config: a ``TrainConfig``; fields left at None are resolved from the
      dataset (``resolve_config``).
    workdir: output directory; an existing checkpoint there is resumed.
    genotype: a ``Genotype``, zoo name or JSON file; defaults to
      ``config.genotype``.
    progress: show a progress bar on stderr.
    log: where one-line status messages go.

  Returns:
    A ``TrainResult``.

  Raises:
    UserError: unknown genotype or one that fails validation, bad config,
      unprepared dataset, unwritable workdir, a workdir holding another run,
      or a loss that became NaN (the last good checkpoint is kept).
  """
  previous = os.environ.get("DNAS_DEPTHWISE")
  try:
    return _run_train(config, workdir, genotype, progress=progress, log=log)
  finally:
    search_lib._restore_env("DNAS_DEPTHWISE", previous)


def _run_train(config, workdir, genotype, *, progress, log) -> TrainResult:
  import jax
  import jax.numpy as jnp
  import optax
  from tqdm import tqdm

  from dnas import checkpointing
  from dnas import data as data_lib
  from dnas import distributed
  from dnas import genotype as genotype_lib

  genotype = genotype if genotype is not None else config.genotype
  if genotype is None:
    raise UserError(
        "no genotype to train; pass --genotype NAME|FILE.json (zoo: "
        f"{', '.join(genotype_lib.zoo_names())})"
    )
  geno = genotype_lib.resolve(genotype)
  main = distributed.is_main_process()
  if not main:
    progress = False
    log = search_lib._silent
  dataset_name = config.dataset or "digits"
  if dataset_name in ("imagenet", "imagenet2012"):
    raise UserError(
        "training on ImageNet needs a streaming input pipeline (1.28M images do"
        " not fit in memory), which dnas does not have yet; use --tiny, or"
        " dataset=cifar10 / cifar100"
    )
  train_ds = data_lib.load(config.dataset, "train", data_dir=config.data_dir)
  test_ds = data_lib.load(config.dataset, "test", data_dir=config.data_dir)
  if config.max_eval_examples:
    test_ds = dataclasses.replace(
        test_ds,
        images=test_ds.images[: config.max_eval_examples],
        labels=test_ds.labels[: config.max_eval_examples],
    )
  image_shape = train_ds.images.shape[1:]
  config = resolve_config(config, dataset=dataset_name, image_size=image_shape[0])
  validate_config(config)

  workdir = search_lib.prepare_workdir(workdir)
  config_dict = config_lib.to_dict(config)
  _check_genotype(workdir, geno)
  done = search_lib.finished_result(workdir)
  if done is not None and done.get("config") == config_dict:
    log(f"training in {workdir} already finished; not redoing it")
    return TrainResult(
        test_acc=float(done["test_acc"]), workdir=workdir,
        metrics=done.get("metrics", {}), config=config, genotype=geno,
    )
  if main:
    search_lib.check_run_config(workdir, config_dict, "training run")
    if not os.path.exists(os.path.join(workdir, "genotype.json")):
      geno.save(os.path.join(workdir, "genotype.json"))
  search_lib._set_depthwise(config)

  batch = config.batch_size
  mesh = distributed.data_mesh()
  distributed.check_batch(batch, mesh)
  n_train = len(train_ds.labels)
  if n_train < batch:
    raise UserError(
        f"batch_size={batch} exceeds the {n_train} training examples of"
        f" {train_ds.name}; use a smaller batch_size"
    )
  spe = n_train // batch
  if config.max_steps_per_epoch:
    spe = min(spe, config.max_steps_per_epoch)
  k = search_lib._largest_divisor_at_most(spe, config.steps_per_call)
  if k != config.steps_per_call:
    log(f"steps_per_call={config.steps_per_call} does not divide {spe} steps per epoch; using {k}")

  model = _build(
      geno, config, dataset=dataset_name, num_classes=train_ds.num_classes,
      image_shape=image_shape,
  )
  graphdef, params, rest = _split(model)
  optimizer = _optimizer(config, spe)
  state = TrainState(jnp.zeros((), jnp.int32), params, rest, optimizer.init(params))

  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
  )
  resumed_from = ckpt.latest_step()
  start_epoch, last_epoch = 0, None
  if resumed_from is not None:
    state, meta = ckpt.restore(resumed_from, template=state)
    if meta.get("fingerprint") != search_lib._fingerprint(config_dict):
      raise UserError(
          f"the checkpoint in {ckpt.directory} was written by another config or"
          " genotype; use a new --workdir (nothing was changed)"
      )
    last_epoch = int(meta["epoch"])
    start_epoch = last_epoch + 1
    log(f"resuming {workdir} from step {resumed_from} (epoch {start_epoch + 1} of {config.epochs})")
  metrics_log = search_lib.MetricsLog(workdir, keep_through_epoch=last_epoch, enabled=main)

  dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
  mean, std = train_ds.mean, train_ds.std
  num_classes = train_ds.num_classes

  def preprocess(images, key):
    crop_key, cutout_key = jax.random.split(key)
    x = data_lib.augment(images, key=crop_key, pad=config.crop_padding, flip=config.flip)
    x = data_lib.normalize(x, mean, std)
    # Cutout zeroes normalized pixels (the mean colour), as the reference.
    x = data_lib.augment(x, key=cutout_key, pad=0, flip=False, cutout=config.cutout)
    return x.astype(dtype)

  def cross_entropy(logits, labels):
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), config.label_smoothing
    )
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()

  def loss_fn(params, rest, images, labels, drop_prob, key):
    from flax import nnx

    net = nnx.merge(graphdef, params, rest, copy=True)
    logits, logits_aux = net(images, drop_prob, key=key)
    loss = cross_entropy(logits, labels)
    if logits_aux is not None:
      loss = loss + config.auxiliary_weight * cross_entropy(logits_aux, labels)
    _, _, new_rest = _split(net)
    return loss, (new_rest, logits)

  def train_step(state: TrainState, images, labels, key):
    epoch = jnp.floor_divide(state.step, spe).astype(jnp.float32)
    drop_prob = config.drop_path_prob * epoch / config.epochs
    (loss, (rest, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.rest, images, labels, drop_prob, key
    )
    updates, opt = optimizer.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "train_loss": loss,
        "train_acc": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
        "lr": learning_rate(epoch, config),
        "drop_prob": drop_prob,
    }
    return TrainState(state.step + 1, params, rest, opt), metrics

  base_key = jax.random.PRNGKey(config.seed + 1)
  state = distributed.put_replicated(state, mesh)
  base_key = distributed.put_replicated(base_key, mesh)
  train_images, train_labels = distributed.put_replicated(
      (train_ds.images, train_ds.labels), mesh
  )
  batch_sharding = distributed.batch_sharded(mesh)
  traces = {"chunk": 0}

  def chunk(state, key, images, labels, idx):
    traces["chunk"] += 1

    def body(state, idx):
      aug_key, drop_key = jax.random.split(jax.random.fold_in(key, state.step))
      shard = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)
      x, y = shard(preprocess(images[idx], aug_key)), shard(labels[idx])
      return train_step(state, x, y, drop_key)

    return jax.lax.scan(body, state, idx)

  chunk_jit = jax.jit(chunk, donate_argnums=(0,))

  def predict(state, images):
    from flax import nnx

    net = nnx.merge(graphdef, state.params, state.rest, copy=True)
    net.eval()
    return net(images)[0]

  evaluate = search_lib.make_evaluate(predict, config, mean, std, batch, mesh)
  compiled, compile_s = None, 0.0
  bar = tqdm(
      total=config.epochs * spe, initial=start_epoch * spe, unit="step",
      disable=not progress, dynamic_ncols=True, desc="train",
  )
  record: dict[str, Any] = {}
  started = time.time()
  try:
    for epoch in range(start_epoch, config.epochs):
      order = data_lib.epoch_permutation(n_train, epoch, seed=config.seed)
      idx_all = order[: spe * batch].reshape(spe // k, k, batch)
      sums: dict[str, float] = {}
      epoch_start = time.time()
      for c in range(spe // k):
        idx = distributed.put_replicated(idx_all[c], mesh)
        args = (state, base_key, train_images, train_labels, idx)
        if compiled is None:
          t0 = time.time()
          bar.set_postfix_str("compiling the training step ...")
          compiled = chunk_jit.lower(*args).compile()
          compile_s = time.time() - t0
          line = f"compiled the training step in {compile_s:.1f} s"
          bar.write(line) if progress else log(line)
        t0 = time.time()
        state, metrics = compiled(*args)
        metrics = jax.device_get(metrics)
        dt = time.time() - t0
        if not all(np.all(np.isfinite(v)) for v in metrics.values()):
          last = ckpt.latest_step()
          kept = (f"the last good checkpoint (step {last}) is kept" if last is not None
                  else "no checkpoint was written")
          raise UserError(
              f"the loss became NaN or inf at epoch {epoch + 1}, step {int(state.step)};"
              f" {kept} in {ckpt.directory}; lower lr and use a new --workdir"
          )
        for name, values in metrics.items():
          sums[name] = sums.get(name, 0.0) + float(np.sum(values))
        steps_done = (c + 1) * k
        bar.update(k)
        bar.set_postfix(
            epoch=f"{epoch + 1}/{config.epochs}",
            loss=f"{sums['train_loss'] / steps_done:.3f}",
            acc=f"{sums['train_acc'] / steps_done:.3f}",
            img_s=f"{batch * k / max(dt, 1e-9):.1f}",
        )
      epoch_s = time.time() - epoch_start
      test_acc = evaluate(state, test_ds.images, test_ds.labels)
      record = {
          "epoch": epoch,
          "step": int(state.step),
          **{name: value / spe for name, value in sums.items()},
          "test_acc": test_acc,
          "epoch_s": epoch_s,
          "img_per_s": batch * spe / max(epoch_s, 1e-9),
      }
      metrics_log.write(record, int(state.step))
      line = (f"epoch {epoch + 1}/{config.epochs}: train_acc {record['train_acc']:.3f}"
              f" test_acc {test_acc:.4f} ({record['img_per_s']:.0f} img/s)")
      bar.write(line) if progress else None
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs:
        ckpt.save(int(state.step), state, {
            "epoch": epoch, "fingerprint": search_lib._fingerprint(config_dict)
        })
  finally:
    bar.close()
    metrics_log.close()

  if not record:  # resumed after the last epoch's checkpoint
    record = dict(metrics_log.records[-1]) if metrics_log.records else {}
  test_acc = float(record.get("test_acc", evaluate(state, test_ds.images, test_ds.labels)))
  if main:
    host_state = jax.device_get(state)
    search_lib._save_npz_atomic(
        os.path.join(workdir, "params.npz"), **_flat_named((host_state.params, host_state.rest))
    )
    search_lib._write_json_atomic(
        os.path.join(workdir, "result.json"),
        {
            "config": config_dict,
            "genotype": geno.to_dict(),
            "dataset": dataset_name,
            "num_classes": num_classes,
            "image_shape": list(image_shape),
            "test_acc": test_acc,
            "metrics": record,
            "steps": int(state.step),
            "compile_s": compile_s,
            "traces": traces["chunk"],
            "wall_s": time.time() - started,
            "resumed_from": resumed_from,
            "devices": int(mesh.devices.size),
            "processes": jax.process_count(),
        },
    )
  ckpt.close()
  return TrainResult(
      test_acc=test_acc, workdir=workdir, metrics=record, config=config,
      genotype=geno, resumed_from=resumed_from,
  )

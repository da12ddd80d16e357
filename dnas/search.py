"""The search library: ``run_search(config, workdir)``.

Wires data, the supernet, an architect (a bilevel optimiser chosen by name),
checkpoints and logging together. One run writes into its workdir:

- ``config.json``: the resolved config (a rerun must match it);
- ``metrics.jsonl`` and TensorBoard event files (``tb/``): per-epoch metrics
  and the genotype derived at each epoch;
- ``checkpoints/``: orbax checkpoints of the whole search state;
- ``alphas_history.npz``: raw alphas after every epoch (``dnas plot --run``);
- at the end ``alphas.npz`` (arrays ``normal`` and ``reduce``, the ``dnas
  derive`` format), ``genotype.json`` and ``result.json``.

Running again on a workdir with a checkpoint resumes it; a finished run is
not redone. Runs are deterministic on CPU: the data order is a function of
(seed, epoch), augmentation keys are folded with the step number, and a
resumed run continues bit-identically.

  >>> from dnas import config, search
  >>> result = search.run_search(config.SearchConfig(epochs=2), 'runs/demo')
  >>> print(result.genotype)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from dnas import config as config_lib
from dnas.errors import UserError

__all__ = ["SearchResult", "run_search", "STRATEGIES", "validate_config", "prepare_workdir"]

STRATEGIES = ("darts", "enas")


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """What a finished search produced.

  Attributes:
    genotype: the derived ``Genotype``.
    alphas_normal: raw alpha logits of normal cells (edges, ops).
    alphas_reduce: raw alpha logits of reduction cells.
    workdir: where the outputs are.
    metrics: the last epoch's metrics.
    resumed_from: the step a checkpoint was restored at, or None.
  """

  genotype: Any
  alphas_normal: np.ndarray
  alphas_reduce: np.ndarray
  workdir: str
  metrics: dict[str, Any]
  resumed_from: int | None = None


def validate_config(config: config_lib.SearchConfig) -> None:
  """Checks a search config; raises ``UserError`` naming the bad field."""
  from dnas import data as data_lib
  from dnas import ops

  if config.strategy not in STRATEGIES:
    raise UserError(
        f"unknown strategy {config.strategy!r}; choose one of {', '.join(STRATEGIES)}"
    )
  if config.dataset is not None and config.dataset not in data_lib.KNOWN_DATASETS:
    if "/" in config.dataset or config.dataset.startswith("hf:"):
      raise UserError(
          f"unknown dataset {config.dataset!r}; known: {', '.join(data_lib.KNOWN_DATASETS)}"
      )
  from dnas.architects import darts

  if config.hypergradient not in darts.HYPERGRADIENTS:
    raise UserError(
        f"unknown hypergradient {config.hypergradient!r}; choose one of"
        f" {', '.join(darts.HYPERGRADIENTS)}"
    )
  unknown = [p for p in config.primitives if p not in ops.OPS]
  if unknown:
    raise UserError(
        f"unknown primitives {', '.join(unknown)}; registered ops: {', '.join(ops.OPS)}"
    )
  validate_execution(config)
  for name in ("epochs", "batch_size", "init_channels", "layers", "steps", "steps_per_call"):
    if getattr(config, name) < 1:
      raise UserError(f"{name} must be >= 1, got {getattr(config, name)}")
  if not 1 <= config.multiplier <= config.steps:
    raise UserError(
        f"multiplier must be in 1..steps={config.steps}, got {config.multiplier}"
    )
  if not 0.0 < config.train_portion < 1.0:
    raise UserError(f"train_portion must be in (0, 1), got {config.train_portion}")


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` and checks it is writable; returns its absolute path."""
  workdir = os.path.abspath(os.fspath(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as error:
    raise UserError(
        f"workdir {workdir!r} is not writable ({error.strerror or error});"
        " pass a --workdir you can write to"
    ) from None
  return workdir


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def _save_npz_atomic(path: str, **arrays) -> None:
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def check_run_config(workdir: str, config_dict: dict[str, Any], what: str) -> None:
  """Writes ``config.json`` or checks that a rerun uses the same config."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        previous = json.load(f)
    except (OSError, ValueError):
      raise UserError(
          f"{path} is unreadable; use a new --workdir (nothing was changed)"
      ) from None
    if previous != config_dict:
      changed = sorted(
          k for k in set(previous) | set(config_dict)
          if previous.get(k) != config_dict.get(k)
      )
      raise UserError(
          f"workdir {workdir!r} holds a {what} with a different config"
          f" ({', '.join(changed)} differ); use a new --workdir (nothing was changed)"
      )
  else:
    _write_json_atomic(path, config_dict)


class MetricsLog:
  """Per-epoch metrics as JSON lines plus TensorBoard scalars."""

  def __init__(self, workdir: str, *, keep_through_epoch: int | None, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    records = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          line = line.strip()
          if not line:
            continue
          try:
            record = json.loads(line)
          except ValueError:
            break  # a line cut by a kill: drop it and what follows
          records.append(record)
    # Lines written after the last checkpoint describe work that will be redone.
    limit = -1 if keep_through_epoch is None else keep_through_epoch
    self.records = [r for r in records if r.get("epoch", -1) <= limit]
    if enabled:
      tmp = f"{self.path}.tmp-{os.getpid()}"
      with open(tmp, "w") as f:
        for r in self.records:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, self.path)
    self._tb = None
    self._tb_dir = os.path.join(workdir, "tb")

  def write(self, record: dict[str, Any], step: int) -> None:
    self.records.append(record)
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    if self._tb is None:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(self._tb_dir)
    for key, value in record.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(key, value, step)
    if "genotype" in record:
      self._tb.add_text("genotype", json.dumps(record["genotype"]), step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _fingerprint(config_dict: dict[str, Any]) -> str:
  import hashlib

  return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:16]


def finished_result(workdir: str):
  """The ``result.json`` of a finished run in ``workdir``, or None."""
  path = os.path.join(workdir, "result.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_search(
    config: config_lib.SearchConfig,
    workdir: str,
    *,
    progress: bool = True,
    log=print,
) -> SearchResult:
  """Runs (or resumes, or returns) the search described by ``config``.

  Args:
    config: a ``SearchConfig``; ``config.strategy`` picks the architect.
    workdir: output directory; an existing checkpoint there is resumed.
    progress: show a progress bar on stderr.
    log: where one-line status messages go (``print`` by default).

  Returns:
    A ``SearchResult``.

  Raises:
    UserError: bad config, unprepared dataset, unwritable workdir, a workdir
      holding a different run, or a loss that became NaN (the last good
      checkpoint is kept).
  """
  config = dataclasses.replace(config, epochs=config_lib.search_epochs(config))
  validate_config(config)
  previous = os.environ.get("DNAS_DEPTHWISE")
  try:
    if config.strategy == "enas":
      from dnas.architects import enas

      return enas.run_enas_search(config, workdir, progress=progress, log=log)
    return _run_darts(config, workdir, progress=progress, log=log)
  finally:
    _restore_env("DNAS_DEPTHWISE", previous)


def _restore_env(name: str, value: str | None) -> None:
  """Undoes a run's ``DNAS_DEPTHWISE`` choice, so one run cannot steer the next."""
  if value is None:
    os.environ.pop(name, None)
  else:
    os.environ[name] = value


def _silent(*args, **kwargs):
  del args, kwargs


def _largest_divisor_at_most(n: int, k: int) -> int:
  return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def make_preprocess(config, mean, std):
  """On-device augmentation and normalisation of a uint8 batch."""
  import jax.numpy as jnp

  from dnas import data as data_lib

  dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32

  def preprocess(images, key):
    images = data_lib.augment(
        images, key=key, pad=config.crop_padding, flip=config.flip
    )
    return data_lib.normalize(images, mean, std).astype(dtype)

  return preprocess


def make_evaluate(predict, config, mean, std, batch_size: int, mesh=None):
  """A jitted eval-mode accuracy over a whole array split (padded batches).

  With a ``mesh`` the batches are placed on all its devices first (needed in
  multi-process runs, where plain host arrays are not global arrays).
  """
  import jax
  import jax.numpy as jnp

  from dnas import data as data_lib

  dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32

  @jax.jit
  def batch_correct(state, images, labels, mask):
    x = data_lib.normalize(images, mean, std).astype(dtype)
    logits = predict(state, x)
    hits = (jnp.argmax(logits, -1) == labels) & mask
    return jnp.sum(hits)

  def evaluate(state, images: np.ndarray, labels: np.ndarray) -> float:
    n = len(labels)
    correct = 0
    for start in range(0, n, batch_size):
      idx = np.arange(start, start + batch_size)
      mask = idx < n
      idx = np.minimum(idx, n - 1)
      inputs = (images[idx], labels[idx], mask)
      if mesh is not None:
        from dnas import distributed

        inputs = distributed.put_replicated(inputs, mesh)
      correct += int(batch_correct(state, *inputs))
    return correct / max(n, 1)

  return evaluate


def validate_execution(config) -> None:
  """The execution fields search and training configs share: ``depthwise``
  and ``compute_dtype``; raises ``UserError`` naming the field."""
  from dnas import ops

  if config.depthwise not in ops.DEPTHWISE_CHOICES:
    raise UserError(
        f"depthwise={config.depthwise!r}; choose one of"
        f" {', '.join(ops.DEPTHWISE_CHOICES)}"
    )
  if config.compute_dtype not in ("float32", "bfloat16"):
    raise UserError(f"compute_dtype={config.compute_dtype!r}; choose float32 or bfloat16")


def _set_depthwise(config) -> None:
  """Applies ``config.depthwise``; ``auto`` keeps the backend's choice."""
  if config.depthwise != "auto":
    os.environ["DNAS_DEPTHWISE"] = config.depthwise


def _run_darts(config, workdir, *, progress, log) -> SearchResult:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from tqdm import tqdm

  from dnas import checkpointing
  from dnas import data as data_lib
  from dnas import distributed
  from dnas import genotype as genotype_lib
  from dnas import supernet as supernet_lib
  from dnas.architects import darts

  main = distributed.is_main_process()
  if not main:
    progress = False
    log = _silent
  workdir = prepare_workdir(workdir)
  config_dict = config_lib.to_dict(config)
  done = finished_result(workdir)
  if done is not None and done.get("config") == config_dict:
    log(f"search in {workdir} already finished; not redoing it")
    with np.load(os.path.join(workdir, "alphas.npz")) as f:
      normal, reduce = f["normal"], f["reduce"]
    return SearchResult(
        genotype=genotype_lib.load(os.path.join(workdir, "genotype.json")),
        alphas_normal=normal,
        alphas_reduce=reduce,
        workdir=workdir,
        metrics=done.get("metrics", {}),
    )
  if main:
    check_run_config(workdir, config_dict, "search")
  _set_depthwise(config)

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
  spe = min(n_train // batch, n_val // batch)
  if config.max_steps_per_epoch:
    spe = min(spe, config.max_steps_per_epoch)
  k = _largest_divisor_at_most(spe, config.steps_per_call)
  if k != config.steps_per_call:
    log(f"steps_per_call={config.steps_per_call} does not divide {spe} steps per epoch; using {k}")

  image_shape = train.images.shape[1:]
  model = supernet_lib.Supernet(
      in_channels=image_shape[-1],
      num_classes=train.num_classes,
      C=config.init_channels,
      layers=config.layers,
      steps=config.steps,
      multiplier=config.multiplier,
      stem_multiplier=config.stem_multiplier,
      primitives=config.primitives,
      alpha_init_scale=config.alpha_init_scale,
      relaxation=config.relaxation,
      scan_edges=config.scan_edges,
      remat=config.remat,
      rngs=nnx.Rngs(config.seed),
  )
  graphdef, weights, alphas, rest = supernet_lib.split(model)
  architect = darts.Darts(graphdef, config, steps_per_epoch=spe)
  state = architect.init(weights, alphas, rest)
  base_key = jax.random.PRNGKey(config.seed + 1)

  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
  )
  resumed_from = ckpt.latest_step()
  start_epoch = 0
  last_epoch = None
  if resumed_from is not None:
    state, meta = ckpt.restore(resumed_from, template=state)
    last_epoch = int(meta["epoch"])
    start_epoch = last_epoch + 1
    log(f"resuming {workdir} from step {resumed_from} (epoch {start_epoch + 1} of {config.epochs})")
  metrics_log = MetricsLog(workdir, keep_through_epoch=last_epoch, enabled=main)

  state = distributed.put_replicated(state, mesh)
  base_key = distributed.put_replicated(base_key, mesh)
  train_images, train_labels, val_images, val_labels = distributed.put_replicated(
      (weights_half.images, weights_half.labels, alphas_half.images, alphas_half.labels),
      mesh,
  )
  preprocess = make_preprocess(config, weights_half.mean, weights_half.std)
  batch_sharding = distributed.batch_sharded(mesh)
  traces = {"chunk": 0}

  def chunk(state, key, train_images, train_labels, val_images, val_labels, idx_t, idx_v):
    traces["chunk"] += 1

    def body(state, idx):
      it, iv = idx
      kt, kv = jax.random.split(jax.random.fold_in(key, state.step))
      shard = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)
      xt, yt = shard(preprocess(train_images[it], kt)), shard(train_labels[it])
      xv, yv = shard(preprocess(val_images[iv], kv)), shard(val_labels[iv])
      return architect.step(state, (xt, yt), (xv, yv))

    return jax.lax.scan(body, state, (idx_t, idx_v))

  chunk_jit = jax.jit(chunk, donate_argnums=(0,))
  evaluate = make_evaluate(
      lambda s, x: architect.predict(s.weights, s.alphas, s.rest, x),
      config,
      weights_half.mean,
      weights_half.std,
      batch,
      mesh,
  )
  compiled = None
  compile_s = 0.0
  total_steps = config.epochs * spe
  bar = tqdm(
      total=total_steps,
      initial=start_epoch * spe,
      unit="step",
      disable=not progress,
      dynamic_ncols=True,
      desc="search",
  )
  history = [
      (r["epoch"], r["alphas_normal"], r["alphas_reduce"]) for r in metrics_log.records
  ]
  record: dict[str, Any] = {}
  started = time.time()
  try:
    for epoch in range(start_epoch, config.epochs):
      order_t = data_lib.epoch_permutation(n_train, epoch, seed=config.seed)
      order_v = data_lib.epoch_permutation(n_val, epoch, seed=config.seed + 1)
      idx_t = order_t[: spe * batch].reshape(spe // k, k, batch)
      idx_v = order_v[: spe * batch].reshape(spe // k, k, batch)
      sums: dict[str, float] = {}
      epoch_start = time.time()
      for c in range(spe // k):
        idx = distributed.put_replicated((idx_t[c], idx_v[c]), mesh)
        args = (state, base_key, train_images, train_labels, val_images, val_labels, *idx)
        if compiled is None:
          t0 = time.time()
          bar.set_postfix_str("compiling the search step ...")
          compiled = chunk_jit.lower(*args).compile()
          compile_s = time.time() - t0
          log_line = f"compiled the search step in {compile_s:.1f} s"
          bar.write(log_line) if progress else log(log_line)
        t0 = time.time()
        state, metrics = compiled(*args)
        metrics = jax.device_get(metrics)
        dt = time.time() - t0
        if not all(np.all(np.isfinite(v)) for v in metrics.values()):
          last = ckpt.latest_step()
          kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
          raise UserError(
              f"the loss became NaN or inf at epoch {epoch + 1}, step {int(state.step)};"
              f" {kept} in {ckpt.directory}; lower w_lr or a_lr and use a new --workdir"
          )
        for key, values in metrics.items():
          sums[key] = sums.get(key, 0.0) + float(np.sum(values))
        done_steps = (c + 1) * k
        bar.update(k)
        bar.set_postfix(
            epoch=f"{epoch + 1}/{config.epochs}",
            loss=f"{sums['train_loss'] / done_steps:.3f}",
            acc=f"{sums['train_acc'] / done_steps:.3f}",
            val_acc=f"{sums['val_acc'] / done_steps:.3f}",
            img_s=f"{2 * batch * k / max(dt, 1e-9):.1f}",
        )
      normal, reduce = (np.asarray(a) for a in architect.alphas_arrays(state))
      geno = genotype_lib.derive(
          normal, reduce, primitives=config.primitives, steps=config.steps,
          multiplier=config.multiplier,
      )
      epoch_s = time.time() - epoch_start
      record = {
          "epoch": epoch,
          "step": int(state.step),
          **{key: value / spe for key, value in sums.items()},
          "val_acc_eval": evaluate(state, alphas_half.images, alphas_half.labels),
          "epoch_s": epoch_s,
          "img_per_s": 2 * batch * spe / max(epoch_s, 1e-9),
          "genotype": geno.to_dict(),
          "alphas_normal": normal.tolist(),
          "alphas_reduce": reduce.tolist(),
      }
      metrics_log.write(record, int(state.step))
      history.append((epoch, record["alphas_normal"], record["alphas_reduce"]))
      if main:
        _save_npz_atomic(
            os.path.join(workdir, "alphas_history.npz"),
            epochs=np.array([h[0] for h in history]),
            normal=np.array([h[1] for h in history], np.float32),
            reduce=np.array([h[2] for h in history], np.float32),
            primitives=np.array(config.primitives),
        )
      bar.write(
          f"epoch {epoch + 1}/{config.epochs}: train_acc {record['train_acc']:.3f}"
          f" val_acc {record['val_acc_eval']:.3f} genotype"
          f" normal={[tuple(e) for e in geno.normal]}"
      ) if progress else None
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs:
        ckpt.save(int(state.step), state, {"epoch": epoch, "fingerprint": _fingerprint(config_dict)})
  finally:
    bar.close()
    metrics_log.close()

  normal, reduce = (np.asarray(a, np.float32) for a in architect.alphas_arrays(state))
  geno = genotype_lib.derive(
      normal, reduce, primitives=config.primitives, steps=config.steps,
      multiplier=config.multiplier,
  )
  final_metrics = {k: v for k, v in record.items() if not k.startswith("alphas")}
  if not final_metrics and metrics_log.records:
    final_metrics = {k: v for k, v in metrics_log.records[-1].items() if not k.startswith("alphas")}
  if main:
    _save_npz_atomic(os.path.join(workdir, "alphas.npz"), normal=normal, reduce=reduce)
    geno.save(os.path.join(workdir, "genotype.json"))
    _write_json_atomic(
        os.path.join(workdir, "result.json"),
        {
            "config": config_dict,
            "genotype": geno.to_dict(),
            "metrics": final_metrics,
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
  return SearchResult(
      genotype=geno,
      alphas_normal=normal,
      alphas_reduce=reduce,
      workdir=workdir,
      metrics=final_metrics,
      resumed_from=resumed_from,
  )

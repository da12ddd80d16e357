"""ENAS search: the sampled child, one trace, learning, determinism, resume, errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import config as config_lib
from dnas import genotype as genotype_lib
from dnas import search
from dnas import supernet as supernet_lib
from dnas.architects import enas
from dnas.errors import UserError

PRIMITIVES = config_lib.TINY_PRIMITIVES  # none, max_pool_3x3, skip_connect, sep_conv_3x3
TINY = dataclasses.replace(
    config_lib.tiny_search(config_lib.SearchConfig(strategy="enas")),
    epochs=8,
    batch_size=32,
    max_steps_per_epoch=0,
    enas_controller_steps=30,
    enas_num_aggregate=10,
    enas_derive_samples=64,
    # A sharper controller than ENAS's defaults (temperature 5, tanh 1.1,
    # lr 3.5e-3, which bound an op's probability near 0.55 of 3), so that
    # learning shows within a short CPU run.
    enas_temperature=1.0,
    enas_tanh_constant=5.0,
    enas_lr=0.01,
)
TINY_OVERRIDES = [
    f"{f.name}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
    for f in dataclasses.fields(TINY)
    if (v := getattr(TINY, f.name)) != getattr(config_lib.SearchConfig(), f.name)
]


def _quiet(*args, **kwargs):
  del args, kwargs


def _bytes(path):
  with open(path, "rb") as f:
    return f.read()


def _one_hot_weights(arch, steps, num_primitives, ids):
  """DARTS edge weights that select exactly the sampled ops (the second path)."""
  weights = np.zeros((sum(2 + i for i in range(steps)), num_primitives), np.float32)
  offset = 0
  for i in range(steps):
    for slot in range(2):
      weights[offset + int(arch[i, slot]), ids[int(arch[i, 2 + slot])]] += 1.0
    offset += i + 2
  return jnp.asarray(weights)


def _tiny_supernet(seed=0):
  return supernet_lib.Supernet(
      in_channels=1, num_classes=10, C=4, layers=3, steps=2, multiplier=2,
      primitives=PRIMITIVES, rngs=nnx.Rngs(seed),
  )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("enas"))
  result = search.run_search(TINY, workdir, progress=False, log=_quiet)
  return workdir, result


def test_sampled_child_equals_the_supernet_with_one_hot_weights():
  """Supernet.sampled (switch over candidates) == the DARTS forward with one-hot weights."""
  ids = enas.op_ids(PRIMITIVES)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  for i in range(2):
    arch = enas.uniform_arch(jax.random.key(10 + i), steps=2, num_ops=len(ids))
    child = _tiny_supernet()
    reference = _tiny_supernet()
    got = child.sampled(x, arch[0], arch[1], ids)
    s0 = s1 = reference.stem_bn(reference.stem_conv(x))
    for cell in reference.cells:
      w = _one_hot_weights(arch[1] if cell.reduction else arch[0], 2, len(PRIMITIVES), ids)
      s0, s1 = s1, cell(s0, s1, w)
    expected = reference.classifier(jnp.mean(s1, axis=(1, 2)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-5)


def test_child_forward_is_traced_once_for_many_architectures():
  ids = enas.op_ids(PRIMITIVES)
  model = _tiny_supernet()
  graphdef, state = nnx.split(model)
  traces = []

  @jax.jit
  def forward(state, x, arch):
    traces.append(1)
    return nnx.merge(graphdef, state).sampled(x, arch[0], arch[1], ids)

  x = jnp.ones((2, 8, 8, 1))
  archs = [enas.uniform_arch(jax.random.key(i), steps=2, num_ops=len(ids)) for i in range(6)]
  assert len({np.asarray(a).tobytes() for a in archs}) > 1
  outputs = [np.asarray(forward(state, x, a)) for a in archs]
  assert len(traces) == 1
  assert not all(np.allclose(outputs[0], o) for o in outputs[1:])


def test_controller_samples_valid_architectures_with_consistent_log_probs():
  ids = enas.op_ids(PRIMITIVES)
  controller = enas.Controller(num_ops=len(ids), steps=3, lstm_size=16, rngs=nnx.Rngs(0))
  for i in range(5):
    arch, log_prob, entropy = controller(jax.random.key(i), temperature=5.0, tanh_constant=1.1)
    arch = np.asarray(arch)
    assert arch.shape == (2, 3, 4)
    for cell in arch:
      for node, row in enumerate(cell):
        assert 0 <= row[0] < node + 2 and 0 <= row[1] < node + 2
        assert 0 <= row[2] < len(ids) and 0 <= row[3] < len(ids)
    assert float(log_prob) < 0 and float(entropy) > 0
  # Greedy decoding is deterministic and at least as likely as any sample.
  g1, lp_greedy, _ = controller(jax.random.key(0), temperature=5.0, tanh_constant=1.1, greedy=True)
  g2, _, _ = controller(jax.random.key(99), temperature=5.0, tanh_constant=1.1, greedy=True)
  assert np.array_equal(np.asarray(g1), np.asarray(g2))
  genotype = enas.arch_to_genotype(g1, PRIMITIVES, steps=3, multiplier=2)
  assert genotype.steps == 3


def test_outputs_and_one_trace_per_phase(reference_run):
  workdir, result = reference_run
  for name in ("genotype.json", "genotype_greedy.json", "architectures.npz", "result.json", "metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, name)), name
  genotype_lib.Genotype.load(os.path.join(workdir, "genotype.json"))  # validates
  with open(os.path.join(workdir, "result.json")) as f:
    done = json.load(f)
  assert done["traces"] == {"child": 1, "controller": 1}
  assert done["steps"] == TINY.epochs * (718 // TINY.batch_size)  # digits: 718 weight images
  assert done["controller_steps"] == TINY.epochs * TINY.enas_controller_steps
  with np.load(os.path.join(workdir, "architectures.npz")) as f:
    sampled = f["sampled"]
  assert len({a.tobytes() for a in sampled}) > 1  # many architectures, one trace
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["epoch"] for r in records] == list(range(TINY.epochs))


def test_trained_controller_beats_a_uniform_controller(reference_run):
  """On the same shared weights and batches, its samples score above uniform ones."""
  workdir, _ = reference_run
  with np.load(os.path.join(workdir, "architectures.npz")) as f:
    trained, uniform = f["scores"], f["uniform_scores"]
  standard_error = np.sqrt(trained.var() / len(trained) + uniform.var() / len(uniform))
  assert trained.mean() > uniform.mean() + 3 * standard_error, (trained.mean(), uniform.mean())


def test_same_seed_same_genotype(reference_run, tmp_path):
  workdir, _ = reference_run
  search.run_search(TINY, str(tmp_path), progress=False, log=_quiet)
  for name in ("genotype.json", "genotype_greedy.json", "architectures.npz"):
    assert _bytes(tmp_path / name) == _bytes(os.path.join(workdir, name)), name


def test_killed_run_resumes_identically(reference_run, tmp_path):
  workdir, _ = reference_run
  proc = subprocess.Popen(
      [sys.executable, "-m", "dnas.cli", "search", "--no-progress", "--workdir",
       str(tmp_path), *TINY_OVERRIDES],
      env=dict(os.environ, PYTHONUNBUFFERED="1"),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
  )
  checkpoints = tmp_path / "checkpoints"
  deadline = time.time() + 600
  try:
    while time.time() < deadline and proc.poll() is None:
      if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        break
      time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  assert not (tmp_path / "result.json").exists()
  result = search.run_search(TINY, str(tmp_path), progress=False, log=_quiet)
  assert result.resumed_from is not None
  for name in ("genotype.json", "genotype_greedy.json", "architectures.npz"):
    assert _bytes(tmp_path / name) == _bytes(os.path.join(workdir, name)), name


def test_finished_run_is_not_redone(reference_run):
  workdir, result = reference_run
  again = search.run_search(TINY, workdir, progress=False, log=_quiet)
  assert again.genotype == result.genotype


def test_space_without_ops_is_refused(tmp_path):
  config = dataclasses.replace(TINY, primitives=("none",))
  with pytest.raises(UserError, match="none") as info:
    search.run_search(config, str(tmp_path), progress=False, log=_quiet)
  assert "\n" not in str(info.value)


def test_experiment_config_carries_the_enas_settings():
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "enas_cifar10_search.py")
  config = config_lib.load_config(path, config_lib.SearchConfig)
  # Pham et al. 2018, micro search: 150 epochs, batch 160, controller Adam lr
  # 0.0035, tanh constant 1.10, temperature 5.0, entropy weight 1e-4,
  # baseline decay 0.99, LSTM size 64.
  expected = dict(strategy="enas", dataset="cifar10", epochs=150, batch_size=160,
                  enas_lr=3.5e-3, enas_tanh_constant=1.1, enas_temperature=5.0,
                  enas_entropy_weight=1e-4, enas_baseline_decay=0.99, enas_lstm_size=64)
  for key, value in expected.items():
    assert getattr(config, key) == value, key
  tiny = config_lib.load_config(path, config_lib.SearchConfig, tiny=True)
  assert tiny.strategy == "enas" and tiny.dataset is None

"""End-to-end DARTS search on a tiny supernet: outputs, determinism, resume, errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dnas import config as config_lib
from dnas import genotype as genotype_lib
from dnas import search
from dnas.errors import UserError

TINY = config_lib.SearchConfig(
    init_channels=4,
    layers=2,
    steps=2,
    multiplier=2,
    primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
    epochs=3,
    batch_size=16,
    max_steps_per_epoch=3,
    depthwise="native",
)
TINY_OVERRIDES = [
    "init_channels=4",
    "layers=2",
    "steps=2",
    "multiplier=2",
    "primitives=none,max_pool_3x3,skip_connect,sep_conv_3x3",
    "epochs=3",
    "batch_size=16",
    "max_steps_per_epoch=3",
    "depthwise=native",
]


def _quiet(*args, **kwargs):
  del args, kwargs


def _bytes(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = search.run_search(TINY, workdir, progress=False, log=_quiet)
  return workdir, result


def test_outputs_are_written_and_consistent(reference_run):
  workdir, result = reference_run
  for name in ("genotype.json", "alphas.npz", "alphas_history.npz", "metrics.jsonl",
               "config.json", "result.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with np.load(os.path.join(workdir, "alphas.npz")) as f:
    normal, reduce = f["normal"], f["reduce"]
  assert normal.shape == reduce.shape == (5, 4)
  # The written genotype is exactly the DARTS rule applied to the written alphas.
  derived = genotype_lib.derive(normal, reduce, primitives=TINY.primitives, steps=2, multiplier=2)
  assert genotype_lib.load(os.path.join(workdir, "genotype.json")) == derived == result.genotype
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert all("genotype" in r for r in records)
  with np.load(os.path.join(workdir, "alphas_history.npz")) as f:
    assert f["normal"].shape == (3, 5, 4)
    np.testing.assert_array_equal(f["normal"][-1], normal)
    # Adam moves each alpha by up to a_lr = 3e-4 per step: 6 steps after epoch 1.
    moved = np.abs(f["reduce"][-1] - f["reduce"][0]).max()
  assert 3e-4 < moved < 6 * 3e-4 + 1e-5


def test_search_step_is_traced_once(reference_run):
  workdir, _ = reference_run
  with open(os.path.join(workdir, "result.json")) as f:
    result = json.load(f)
  # 3 epochs x 3 steps, one compiled call per step: one trace in all.
  assert result["steps"] == 9
  assert result["traces"] == 1


def test_steps_per_call_scans_the_same_search(reference_run, tmp_path):
  # A whole epoch (3 steps) as one lax.scan: the same steps, data and keys
  # as one call per step, so the same alphas; still one trace in all.
  workdir, _ = reference_run
  messages = []
  search.run_search(dataclasses.replace(TINY, steps_per_call=3), str(tmp_path),
                    progress=False, log=messages.append)
  assert not [m for m in messages if "steps_per_call" in str(m)]  # 3 divides 3: no fallback
  with open(tmp_path / "result.json") as f:
    result = json.load(f)
  assert result["steps"] == 9 and result["traces"] == 1
  with np.load(tmp_path / "alphas.npz") as scanned, \
       np.load(os.path.join(workdir, "alphas.npz")) as stepped:
    for name in ("normal", "reduce"):
      np.testing.assert_allclose(scanned[name], stepped[name], rtol=1e-5, atol=1e-8)
  assert _bytes(tmp_path / "genotype.json") == _bytes(os.path.join(workdir, "genotype.json"))


def test_same_seed_gives_identical_alphas(reference_run, tmp_path):
  workdir, _ = reference_run
  search.run_search(TINY, str(tmp_path), progress=False, log=_quiet)
  assert _bytes(tmp_path / "alphas.npz") == _bytes(os.path.join(workdir, "alphas.npz"))
  assert _bytes(tmp_path / "genotype.json") == _bytes(os.path.join(workdir, "genotype.json"))


def test_finished_run_is_not_redone(reference_run):
  workdir, _ = reference_run
  before = _bytes(os.path.join(workdir, "alphas.npz"))
  messages = []
  result = search.run_search(TINY, workdir, progress=False, log=messages.append)
  assert any("already finished" in m for m in messages)
  assert _bytes(os.path.join(workdir, "alphas.npz")) == before
  assert result.genotype == genotype_lib.load(os.path.join(workdir, "genotype.json"))


def test_killed_run_resumes_bit_identical(reference_run, tmp_path):
  workdir, _ = reference_run
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "dnas.cli", "search", "--no-progress", "--workdir",
       str(tmp_path), *TINY_OVERRIDES],
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  checkpoints = tmp_path / "checkpoints"
  deadline = time.time() + 600
  try:
    while time.time() < deadline and proc.poll() is None:
      steps = [p for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
      if steps:
        break
      time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  assert not (tmp_path / "result.json").exists()
  result = search.run_search(TINY, str(tmp_path), progress=False, log=_quiet)
  assert result.resumed_from is not None
  assert _bytes(tmp_path / "alphas.npz") == _bytes(os.path.join(workdir, "alphas.npz"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  from dnas.architects import darts
  import jax.numpy as jnp

  original_step = darts.Darts.step

  def step_that_diverges_in_epoch_two(self, state, train_batch, val_batch):
    new_state, metrics = original_step(self, state, train_batch, val_batch)
    poison = jnp.where(state.step >= 3, jnp.nan, 0.0)
    metrics = dict(metrics, train_loss=metrics["train_loss"] + poison)
    return new_state, metrics

  monkeypatch.setattr(darts.Darts, "step", step_that_diverges_in_epoch_two)
  with pytest.raises(UserError, match="NaN") as info:
    search.run_search(TINY, str(tmp_path), progress=False, log=_quiet)
  assert "\n" not in str(info.value)
  assert "step 3" in str(info.value)  # the last good checkpoint is named
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
  assert not (tmp_path / "result.json").exists()
  assert not (tmp_path / "alphas.npz").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        pytest.param({"strategy": "nas-bench"}, "unknown strategy", id="unknown-strategy"),
        pytest.param({"hypergradient": "third_order"}, "unknown hypergradient", id="unknown-hypergradient"),
        pytest.param({"primitives": ("none", "conv_9x9")}, "unknown primitives", id="unknown-primitive"),
        pytest.param({"multiplier": 5}, "multiplier", id="bad-multiplier"),
        pytest.param({"batch_size": 4000}, "batch_size", id="batch-too-large"),
        pytest.param({"depthwise": "fft"}, "depthwise='fft'; choose one of auto, shift, shift_vjp, native", id="bad-depthwise"),
        pytest.param({"compute_dtype": "float16"}, "compute_dtype='float16'", id="bad-dtype"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, overrides, message):
  config = dataclasses.replace(TINY, **overrides)
  with pytest.raises(UserError, match=message) as info:
    search.run_search(config, str(tmp_path), progress=False, log=_quiet)
  assert "\n" not in str(info.value)


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  config = dataclasses.replace(TINY, dataset="cifar10", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(UserError, match="dnas prepare cifar10") as info:
    search.run_search(config, str(tmp_path / "work"), progress=False, log=_quiet)
  assert "\n" not in str(info.value)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  with pytest.raises(UserError, match="not writable"):
    search.run_search(TINY, str(blocker / "run"), progress=False, log=_quiet)


def test_workdir_with_a_different_run_is_refused(reference_run):
  workdir, _ = reference_run
  before = {name: _bytes(os.path.join(workdir, name)) for name in ("alphas.npz", "config.json")}
  with pytest.raises(UserError, match="different config"):
    search.run_search(dataclasses.replace(TINY, seed=7), workdir, progress=False, log=_quiet)
  for name, content in before.items():
    assert _bytes(os.path.join(workdir, name)) == content


def test_cli_unknown_config_key_exits_2(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "dnas.cli", "search", "--workdir", str(tmp_path), "epochz=3"],
      capture_output=True,
      text=True,
  )
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown config key 'epochz'" in lines[0] and "epochs" in lines[0]


# Data parallelism: one genotype whatever the device or process count. ---------


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _search_cli(workdir, *extra, env=None, **kwargs):
  return subprocess.Popen(
      [sys.executable, "-m", "dnas.cli", "search", "--no-progress", "--workdir",
       str(workdir), *TINY_OVERRIDES, *extra],
      env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      **kwargs,
  )


def _assert_same_search(workdir, reference_dir):
  assert _bytes(os.path.join(workdir, "genotype.json")) == _bytes(
      os.path.join(reference_dir, "genotype.json"))
  with np.load(os.path.join(workdir, "alphas.npz")) as a, np.load(
      os.path.join(reference_dir, "alphas.npz")) as b:
    np.testing.assert_allclose(a["normal"], b["normal"], atol=1e-5)
    np.testing.assert_allclose(a["reduce"], b["reduce"], atol=1e-5)


def test_four_devices_give_the_one_device_genotype(reference_run, tmp_path):
  workdir, _ = reference_run
  proc = _search_cli(tmp_path, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err
  with open(tmp_path / "result.json") as f:
    assert json.load(f)["devices"] == 4
  _assert_same_search(tmp_path, workdir)


def test_two_processes_give_the_one_process_genotype(reference_run, tmp_path):
  workdir, _ = reference_run
  port = _free_port()
  procs = [
      _search_cli(tmp_path, env={
          "DNAS_COORDINATOR": f"127.0.0.1:{port}",
          "DNAS_NUM_PROCESSES": "2",
          "DNAS_PROCESS_ID": str(i),
      })
      for i in (0, 1)
  ]
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err
  assert "genotype:" in outputs[0][0] and "genotype:" not in outputs[1][0]
  with open(tmp_path / "result.json") as f:
    result = json.load(f)
  assert result["processes"] == 2 and result["devices"] == 2
  _assert_same_search(tmp_path, workdir)


def test_batch_that_does_not_divide_across_devices(tmp_path):
  proc = _search_cli(tmp_path, "batch_size=15",
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  assert len(err.strip().splitlines()) == 1 and "does not divide across 4 devices" in err


def test_unreachable_coordinator_times_out_clearly(tmp_path):
  started = time.time()
  proc = _search_cli(tmp_path, env={
      "DNAS_COORDINATOR": f"127.0.0.1:{_free_port()}",
      "DNAS_NUM_PROCESSES": "2",
      "DNAS_PROCESS_ID": "1",
      "DNAS_INIT_TIMEOUT": "5",
  })
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert len(err.strip().splitlines()) == 1 and "could not join" in err
  assert time.time() - started < 100


def test_process_id_outside_the_process_count(tmp_path):
  proc = _search_cli(tmp_path, env={
      "DNAS_COORDINATOR": "127.0.0.1:1",
      "DNAS_NUM_PROCESSES": "2",
      "DNAS_PROCESS_ID": "2",
  })
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2 and "outside 0..1" in err

"""Final-network training on the digits: outputs, schedules, resume, bad input."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dnas import config as config_lib
from dnas import data as data_lib
from dnas import genotype as genotype_lib
from dnas import train
from dnas.errors import UserError

TINY = dataclasses.replace(config_lib.tiny_train(config_lib.TrainConfig()), epochs=3)
TINY_OVERRIDES = [
    f"{f.name}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
    for f in dataclasses.fields(TINY)
    if (v := getattr(TINY, f.name)) != getattr(config_lib.TrainConfig(), f.name)
]


def _quiet(*args, **kwargs):
  del args, kwargs


def _bytes(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("train"))
  result = train.run_train(TINY, workdir, "DARTS_V2", progress=False, log=_quiet)
  return workdir, result


def test_outputs_and_metrics(reference_run):
  workdir, result = reference_run
  for name in ("config.json", "genotype.json", "metrics.jsonl", "result.json", "params.npz"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert genotype_lib.Genotype.load(os.path.join(workdir, "genotype.json")) == genotype_lib.from_zoo("DARTS_V2")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["epoch"] for r in records] == [0, 1, 2]
  with open(os.path.join(workdir, "result.json")) as f:
    done = json.load(f)
  assert done["test_acc"] == result.test_acc == records[-1]["test_acc"]
  assert done["traces"] == 1  # one compiled training step for the whole run
  assert os.listdir(os.path.join(workdir, "tb"))


def test_schedules_follow_the_recipe(reference_run):
  """Learning rate (cosine per epoch) and drop-path ramp, against closed forms."""
  workdir, _ = reference_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  epochs = TINY.epochs
  for r in records:
    e = r["epoch"]
    expected_lr = 0.5 * 0.025 * (1 + math.cos(math.pi * e / epochs))  # eta_min 0
    assert r["lr"] == pytest.approx(expected_lr, rel=1e-6)
    assert r["drop_prob"] == pytest.approx(0.2 * e / epochs, rel=1e-6)


def test_exponential_schedule_is_the_imagenet_decay():
  config = dataclasses.replace(TINY, lr=0.1, lr_schedule="exponential", lr_decay=0.97)
  for epoch in (0, 1, 10, 249):
    assert float(train.learning_rate(epoch, config)) == pytest.approx(0.1 * 0.97**epoch, rel=1e-5)


def test_load_model_reproduces_the_reported_accuracy(reference_run):
  """The saved parameters, rebuilt through a second path, give result.json's accuracy."""
  workdir, result = reference_run
  model = train.load_model(workdir)
  train_split = data_lib.load(None, "train")
  test = data_lib.load(None, "test")
  n = TINY.max_eval_examples
  x = data_lib.normalize(test.images[:n], train_split.mean, train_split.std)
  logits, aux = model(x)
  assert aux is None  # eval mode: no auxiliary head
  acc = float(np.mean(np.argmax(np.asarray(logits), -1) == test.labels[:n]))
  assert acc == pytest.approx(result.test_acc, abs=1e-9)


def test_finished_run_is_not_redone(reference_run):
  workdir, result = reference_run
  before = _bytes(os.path.join(workdir, "params.npz"))
  again = train.run_train(TINY, workdir, "DARTS_V2", progress=False, log=_quiet)
  assert again.test_acc == result.test_acc
  assert _bytes(os.path.join(workdir, "params.npz")) == before


def test_killed_run_resumes_bit_identical(reference_run, tmp_path):
  workdir, _ = reference_run
  proc = subprocess.Popen(
      [sys.executable, "-m", "dnas.cli", "train", "--genotype", "DARTS_V2",
       "--no-progress", "--workdir", str(tmp_path), *TINY_OVERRIDES],
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
  result = train.run_train(TINY, str(tmp_path), "DARTS_V2", progress=False, log=_quiet)
  assert result.resumed_from is not None
  assert _bytes(tmp_path / "params.npz") == _bytes(os.path.join(workdir, "params.npz"))


def test_unknown_genotype_lists_the_zoo(tmp_path):
  with pytest.raises(UserError, match="DARTS_V2") as info:
    train.run_train(TINY, str(tmp_path), "DARTS_V9", progress=False, log=_quiet)
  assert "\n" not in str(info.value)
  assert not os.listdir(tmp_path)


def test_invalid_genotype_file_is_one_line(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({
      "normal": [["sep_conv_3x3", 7]] * 8, "normal_concat": [2, 3, 4, 5],
      "reduce": [["max_pool_3x3", 0]] * 8, "reduce_concat": [2, 3, 4, 5],
  }))
  with pytest.raises(UserError) as info:
    train.run_train(TINY, str(tmp_path / "w"), str(bad), progress=False, log=_quiet)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "w").exists()


def test_workdir_of_another_genotype_is_refused(reference_run):
  workdir, _ = reference_run
  before = {
      name: _bytes(os.path.join(workdir, name))
      for name in ("params.npz", "result.json", "genotype.json", "metrics.jsonl")
  }
  with pytest.raises(UserError, match="different genotype"):
    train.run_train(TINY, workdir, "DARTS_V1", progress=False, log=_quiet)
  for name, content in before.items():
    assert _bytes(os.path.join(workdir, name)) == content, name


def test_cli_train_reports_accuracy(reference_run, capsys):
  from dnas import cli

  workdir, result = reference_run
  # A finished workdir is reported without training again.
  code = cli.main(["train", "--genotype", "DARTS_V2", "--no-progress", "--workdir", workdir, *TINY_OVERRIDES])
  out = capsys.readouterr().out
  assert code == 0
  assert f"test accuracy: {result.test_acc:.4f}" in out
  assert "params.npz" in out


def test_cli_train_bad_input_exits_2(tmp_path, capsys):
  from dnas import cli

  code = cli.main(["train", "--genotype", "NOPE", "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith("dnas: error:") and err.count("\n") == 1
  code = cli.main(["train", "--workdir", str(tmp_path)])
  assert code == 2 and "--genotype" in capsys.readouterr().err


def test_imagenet_training_is_refused_clearly(tmp_path):
  config = dataclasses.replace(TINY, dataset="imagenet")
  with pytest.raises(UserError, match="streaming"):
    train.run_train(config, str(tmp_path), "DARTS_V2", progress=False, log=_quiet)


@pytest.mark.parametrize(
    "overrides, message",
    [
        pytest.param({"depthwise": "fft"}, "depthwise='fft'; choose one of auto, shift, shift_vjp, native", id="bad-depthwise"),
        pytest.param({"compute_dtype": "float16"}, "compute_dtype='float16'", id="bad-dtype"),
    ],
)
def test_bad_execution_field_is_one_clear_line(overrides, message):
  with pytest.raises(UserError, match=message) as info:
    train.validate_config(dataclasses.replace(TINY, **overrides))
  assert "\n" not in str(info.value)

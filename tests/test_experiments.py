"""The experiment configs carry the published hyperparameters; their tiny variants run."""

import dataclasses
import os

import pytest

from dnas import config as config_lib
from dnas import reproduce
from dnas import search
from dnas import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")

# Liu et al., DARTS, ICLR 2019: Sec. 3.1 / A.1 (search), 3.2 / A.2 (evaluation).
DARTS_SEARCH = dict(
    strategy="darts", dataset="cifar10", train_portion=0.5, init_channels=16,
    layers=8, steps=4, multiplier=4, stem_multiplier=3, epochs=50, batch_size=64,
    w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_weight_decay=3e-4, grad_clip=5.0,
    a_lr=3e-4, a_beta1=0.5, a_beta2=0.999, a_weight_decay=1e-3, crop_padding=4,
    flip=True,
    primitives=("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"),
)
CIFAR_EVAL = dict(
    genotype="DARTS_V2", init_channels=36, layers=20, auxiliary=True,
    auxiliary_weight=0.4, drop_path_prob=0.2, epochs=600, batch_size=96, lr=0.025,
    lr_min=0.0, lr_schedule="cosine", momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
    label_smoothing=0.0, cutout=16, crop_padding=4, flip=True,
)
PAPER = {
    "darts_cifar10_search_first_order.py": (
        config_lib.SearchConfig, dict(DARTS_SEARCH, hypergradient="first_order")),
    "darts_cifar10_search_second_order.py": (
        config_lib.SearchConfig, dict(DARTS_SEARCH, hypergradient="second_order")),
    "darts_cifar10_eval.py": (config_lib.TrainConfig, dict(CIFAR_EVAL, dataset="cifar10")),
    "darts_cifar100_eval.py": (config_lib.TrainConfig, dict(CIFAR_EVAL, dataset="cifar100")),
    "darts_imagenet_eval.py": (
        config_lib.TrainConfig,
        dict(genotype="DARTS_V2", dataset="imagenet", init_channels=48, layers=14,
             auxiliary=True, auxiliary_weight=0.4, epochs=250, batch_size=128, lr=0.1,
             lr_schedule="exponential", lr_decay=0.97, momentum=0.9,
             weight_decay=3e-5, grad_clip=5.0, label_smoothing=0.1, drop_path_prob=0.0,
             cutout=0),
    ),
}


def _path(name):
  return os.path.join(EXPERIMENTS, name)


def test_every_experiment_file_is_checked_here():
  files = sorted(f for f in os.listdir(EXPERIMENTS) if f.endswith(".py") and not f.startswith("_"))
  unchecked = [f for f in files if f not in PAPER and not f.startswith("enas_")]
  assert not unchecked, f"add the published values of {unchecked} to PAPER"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_config_carries_the_papers_hyperparameters(name):
  cls, published = PAPER[name]
  config = config_lib.load_config(_path(name), cls)
  for key, value in published.items():
    assert getattr(config, key) == value, f"{name}: {key}"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_docstring_gives_the_command_and_the_published_result(name):
  import ast

  with open(_path(name)) as f:
    doc = ast.get_docstring(ast.parse(f.read()))
  command = "dnas search" if PAPER[name][0] is config_lib.SearchConfig else "dnas train"
  assert f"{command} --config experiments/{name}" in " ".join(doc.replace("\\\n", " ").split())
  assert "%" in doc and "Expected cost" in doc


@pytest.mark.parametrize("name", sorted(PAPER))
def test_tiny_variant_keeps_the_recipe_and_runs(name, tmp_path):
  cls, published = PAPER[name]
  config = config_lib.load_config(_path(name), cls, tiny=True)
  full = config_lib.load_config(_path(name), cls)
  recipe = ("hypergradient", "a_lr", "w_lr", "lr_schedule", "label_smoothing", "lr", "weight_decay")
  for key in recipe:
    if hasattr(config, key):
      assert getattr(config, key) == getattr(full, key), key
  assert config.dataset is None  # the embedded digits
  if cls is config_lib.SearchConfig:
    result = search.run_search(config, str(tmp_path), progress=False, log=lambda *a: None)
    assert os.path.exists(tmp_path / "genotype.json")
    assert len(result.genotype.normal) == 2 * config.steps
  else:
    result = train.run_train(config, str(tmp_path), progress=False, log=lambda *a: None)
    assert 0.0 <= result.test_acc <= 1.0
    assert result.config.lr_schedule == published["lr_schedule"]


def test_reproduce_tabulates_seeds(tmp_path):
  """Two tiny searches, each cell retrained; the table agrees with the sub-runs."""
  search_config = dataclasses.replace(
      config_lib.load_config(None, config_lib.SearchConfig, tiny=True), epochs=1
  )
  train_config = dataclasses.replace(
      config_lib.load_config(None, config_lib.TrainConfig, tiny=True), epochs=1
  )
  result = reproduce.run_reproduce(
      search_config, train_config, [0, 1], str(tmp_path), progress=False,
      log=lambda *a: None,
  )
  accs = [row["test_acc"] for row in result.rows]
  assert [row["seed"] for row in result.rows] == [0, 1]
  assert result.mean_test_acc == pytest.approx(sum(accs) / 2)
  assert result.std_test_acc == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
  assert result.best["search_val_acc"] == max(r["search_val_acc"] for r in result.rows)
  for row in result.rows:
    done = search.finished_result(row["train_dir"])
    assert done["test_acc"] == row["test_acc"]
    assert done["genotype"] == row["genotype"]
    assert row["params"] > 0
  table = (tmp_path / "results.md").read_text()
  assert "mean +/- std over 2 cells" in table and "best of 2" in table

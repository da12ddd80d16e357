"""The DARTS reproduction protocol: N searches, each cell retrained, one table.

Liu et al. (2019, Sec. 3.2) run the search four times with different seeds,
retrain every cell found and report the best cell and the spread. Here
``run_reproduce`` runs ``search.run_search`` for each seed
(``WORKDIR/search-seed{S}``), trains each found genotype with
``train.run_train`` (``WORKDIR/train-seed{S}``) and writes one results table:

- per seed: the genotype, its parameter count, the search's validation
  accuracy and the retrained network's test accuracy;
- mean +/- std of the test accuracy over the N cells;
- best of N: the cell with the highest *search validation* accuracy (a
  held-out score, so the test set is not used to choose), and its test
  accuracy.

Every sub-run resumes and finished ones are not redone, so an interrupted
reproduction continues where it stopped.

  >>> from dnas import config, reproduce
  >>> s = config.tiny_search(config.SearchConfig())
  >>> t = config.tiny_train(config.TrainConfig())
  >>> table = reproduce.run_reproduce(s, t, [0, 1], 'runs/repro')
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any

from dnas import config as config_lib
from dnas import search as search_lib
from dnas import train as train_lib
from dnas.errors import UserError

__all__ = ["ReproduceResult", "run_reproduce", "format_table"]


@dataclasses.dataclass(frozen=True)
class ReproduceResult:
  """The results table of a reproduction.

  Attributes:
    rows: one dict per seed (seed, genotype, params, search_val_acc, test_acc,
      search_dir, train_dir).
    mean_test_acc: mean test accuracy over the seeds' cells.
    std_test_acc: sample standard deviation (0 for one seed).
    best: the row chosen by search validation accuracy.
    workdir: where ``results.json`` and ``results.md`` are.
  """

  rows: list[dict[str, Any]]
  mean_test_acc: float
  std_test_acc: float
  best: dict[str, Any]
  workdir: str


def _params(genotype, train_config, num_classes, image_shape) -> int:
  from dnas import summary

  model = train_lib._build(
      genotype, train_config, dataset=train_config.dataset or "digits",
      num_classes=num_classes, image_shape=image_shape,
  )
  return summary.count_params(model)


def format_table(result: ReproduceResult) -> str:
  """The results as a Markdown table with the summary lines under it."""
  lines = [
      "| seed | search val acc | test acc | params | normal cell | reduction cell |",
      "|---:|---:|---:|---:|---|---|",
  ]
  for row in result.rows:
    normal = ", ".join(f"{op}({i})" for op, i in row["genotype"]["normal"])
    reduce = ", ".join(f"{op}({i})" for op, i in row["genotype"]["reduce"])
    lines.append(
        f"| {row['seed']} | {row['search_val_acc']:.4f} | {row['test_acc']:.4f}"
        f" | {row['params']:,} | {normal} | {reduce} |"
    )
  n = len(result.rows)
  lines += [
      "",
      f"mean +/- std over {n} cells: test accuracy {result.mean_test_acc:.4f}"
      f" +/- {result.std_test_acc:.4f} (error {100 * (1 - result.mean_test_acc):.2f}"
      f" +/- {100 * result.std_test_acc:.2f} %)",
      f"best of {n} (chosen by search validation accuracy): seed {result.best['seed']},"
      f" test accuracy {result.best['test_acc']:.4f}"
      f" (error {100 * (1 - result.best['test_acc']):.2f} %)",
  ]
  return "\n".join(lines) + "\n"


def run_reproduce(
    search_config: config_lib.SearchConfig,
    train_config: config_lib.TrainConfig,
    seeds,
    workdir: str,
    *,
    progress: bool = True,
    log=print,
) -> ReproduceResult:
  """Runs the searches and retrainings of ``seeds`` and writes the table.

  Args:
    search_config: the search recipe; its ``seed`` is replaced per run.
    train_config: the retraining recipe; its ``seed`` is replaced per run and
      its ``genotype`` by the run's found cell.
    seeds: the search seeds (e.g. ``range(4)``).
    workdir: parent directory of all runs and of ``results.json``/``.md``.
    progress: progress bars for the sub-runs.
    log: one-line status messages.

  Returns:
    A ``ReproduceResult``.
  """
  from dnas import data as data_lib

  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UserError(f"seeds must be distinct non-negative integers, got {seeds}")
  workdir = search_lib.prepare_workdir(workdir)
  train_data = data_lib.load(train_config.dataset, "train[:1]", data_dir=train_config.data_dir)
  rows = []
  for seed in seeds:
    search_dir = os.path.join(workdir, f"search-seed{seed}")
    train_dir = os.path.join(workdir, f"train-seed{seed}")
    log(f"seed {seed}: search in {search_dir}")
    found = search_lib.run_search(
        dataclasses.replace(search_config, seed=seed), search_dir,
        progress=progress, log=log,
    )
    log(f"seed {seed}: retraining its cell in {train_dir}")
    trained = train_lib.run_train(
        dataclasses.replace(train_config, seed=seed, genotype=None), train_dir,
        found.genotype, progress=progress, log=log,
    )
    rows.append({
        "seed": seed,
        "genotype": found.genotype.to_dict(),
        "params": _params(found.genotype, trained.config, train_data.num_classes,
                          train_data.images.shape[1:]),
        "search_val_acc": float(found.metrics.get("val_acc_eval", float("nan"))),
        "test_acc": float(trained.test_acc),
        "search_dir": search_dir,
        "train_dir": train_dir,
    })
  accs = [row["test_acc"] for row in rows]
  result = ReproduceResult(
      rows=rows,
      mean_test_acc=statistics.fmean(accs),
      std_test_acc=statistics.stdev(accs) if len(accs) > 1 else 0.0,
      best=max(rows, key=lambda row: (row["search_val_acc"], -row["seed"])),
      workdir=workdir,
  )
  search_lib._write_json_atomic(
      os.path.join(workdir, "results.json"),
      {
          "search_config": config_lib.to_dict(search_config),
          "train_config": config_lib.to_dict(train_config),
          "rows": rows,
          "mean_test_acc": result.mean_test_acc,
          "std_test_acc": result.std_test_acc,
          "best_seed": result.best["seed"],
          "best_test_acc": result.best["test_acc"],
      },
  )
  table = format_table(result)
  tmp = os.path.join(workdir, f"results.md.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    f.write(table)
  os.replace(tmp, os.path.join(workdir, "results.md"))
  return result

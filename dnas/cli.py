"""The ``dnas`` command line: the only place that parses arguments.

Every subcommand is a thin wrapper over a library function. A bad input is
reported as one line on stderr (``dnas: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dnas.errors import UserError

__all__ = ["main"]


def _summary(args) -> dict:
  from flax import nnx

  from dnas import genotype as genotype_lib
  from dnas import network
  from dnas import summary

  if args.supernet == bool(args.genotype):
    raise UserError("give exactly one of --genotype NAME|FILE.json or --supernet")
  if args.supernet:
    from dnas import supernet as supernet_lib
    from dnas import variables

    in_channels = args.in_channels or 3
    image_size = args.image_size or 32
    model = supernet_lib.Supernet(
        in_channels=in_channels,
        num_classes=args.classes or 10,
        C=args.init_channels or 16,
        layers=args.layers or 8,
        rngs=nnx.Rngs(0),
    )
    model.eval()
    params = summary.count_params(model)
    arch = sum(
        int(v.size) for v in __import__("jax").tree.leaves(
            nnx.state(model, variables.ArchParam)
        )
    )
    return {
        "model": "supernet",
        "init_channels": args.init_channels or 16,
        "layers": args.layers or 8,
        "classes": args.classes or 10,
        "image_size": image_size,
        "params": params,
        "params_with_aux": params,
        "arch_params": arch,
        "macs": summary.count_macs(model, (1, image_size, image_size, in_channels)),
    }
  geno = genotype_lib.resolve(args.genotype)
  overrides = {}
  if args.init_channels:
    overrides["C"] = args.init_channels
  if args.layers:
    overrides["layers"] = args.layers
  if args.classes:
    overrides["num_classes"] = args.classes
  if args.in_channels:
    overrides["in_channels"] = args.in_channels
  if args.image_size:
    overrides["image_size"] = args.image_size
  model = network.build_network(
      geno, args.dataset, rngs=nnx.Rngs(0), **overrides
  )
  _, defaults = network.DATASETS[args.dataset]
  config = {**defaults, **overrides}
  size = config["image_size"]
  return {
      "model": type(model).__name__,
      "genotype": args.genotype,
      "dataset": args.dataset,
      "init_channels": config["C"],
      "layers": config["layers"],
      "classes": config["num_classes"],
      "image_size": size,
      "params": summary.count_params(model),
      "params_with_aux": summary.count_params(model, exclude_auxiliary=False),
      "macs": summary.count_macs(model, (1, size, size, config["in_channels"])),
  }


def _cmd_summary(args) -> int:
  result = _summary(args)
  if args.json:
    print(json.dumps(result))
  else:
    width = max(len(k) for k in result)
    for key, value in result.items():
      if isinstance(value, int) and key in ("params", "params_with_aux", "macs", "arch_params"):
        value = f"{value:,}"
      print(f"{key:<{width}}  {value}")
  return 0


def _cmd_derive(args) -> int:
  from dnas import genotype as genotype_lib

  normal, reduce = genotype_lib.load_alphas(args.alphas)
  geno = genotype_lib.derive(normal, reduce)
  if args.out:
    geno.save(args.out)
  print(geno.to_json() if args.json or not sys.stdout.isatty() else str(geno))
  return 0


def _init_distributed(args) -> None:
  from dnas import distributed

  distributed.initialize(
      coordinator=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
  )


def _add_distributed_flags(p) -> None:
  group = p.add_argument_group(
      "multi-host (or set DNAS_COORDINATOR, DNAS_NUM_PROCESSES, DNAS_PROCESS_ID;"
      " DNAS_DISTRIBUTED=auto on TPU pods and SLURM)"
  )
  group.add_argument("--coordinator", help="host:port of process 0")
  group.add_argument("--num-processes", type=int, help="number of processes in the run")
  group.add_argument("--process-id", type=int, help="this process's index, 0..N-1")


_COMPILE_CACHE_MAX_BYTES = 2 << 30


def _compile_cache_dir() -> str:
  """Where ``dnas search``, ``train`` and ``reproduce`` keep compiled steps:
  under ``$DNAS_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/dnas/jax`` (default
  ``~/.cache/dnas/jax``), in a subdirectory per jaxlib build and CPU: a home
  directory shared by machines of different CPUs, or a jaxlib reinstalled
  in place, never serves one machine's code to another."""
  if os.environ.get("DNAS_COMPILE_CACHE"):
    base = os.path.expanduser(os.environ["DNAS_COMPILE_CACHE"])
  else:
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    base = os.path.join(home, "dnas", "jax")
  return os.path.join(base, _machine_fingerprint())


def _machine_fingerprint() -> str:
  """A short hash of the jaxlib build, the architecture and the CPU flags."""
  import hashlib
  import platform

  import jaxlib.version

  parts = [jaxlib.version.__version__, platform.machine(), platform.processor()]
  try:
    with open("/proc/cpuinfo") as f:
      parts += sorted({line for line in f if line.startswith(("flags", "Features"))})
  except OSError:
    pass
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _enable_compile_cache(args) -> None:
  """Turns on JAX's persistent compilation cache for a compiling command.

  A resumed run, another seed of ``reproduce`` or the same config again then
  loads its step from disk instead of compiling it again (the full search
  step takes about 45 s to compile on two CPU cores). The cache keeps at
  most 2 GiB (``JAX_COMPILATION_CACHE_MAX_SIZE`` sets another cap). A cache
  the user set with ``JAX_COMPILATION_CACHE_DIR`` is left as it is;
  ``--no-compile-cache`` turns it off.
  """
  if args.no_compile_cache or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  path = _compile_cache_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    print(f"dnas: warning: compiling without a cache: cannot create {path}"
          f" ({error.strerror}); set DNAS_COMPILE_CACHE to a writable"
          " directory", file=sys.stderr)
    return
  import importlib.util

  import jax

  jax.config.update("jax_compilation_cache_dir", path)
  # Least recently used entries go beyond the cap (a full search step is
  # about 3 MiB); JAX's eviction needs filelock, a dependency of dnas.
  if not os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE") and importlib.util.find_spec(
      "filelock"
  ):
    jax.config.update("jax_compilation_cache_max_size", _COMPILE_CACHE_MAX_BYTES)


def _add_compile_cache_flag(p) -> None:
  p.add_argument(
      "--no-compile-cache", action="store_true",
      help="do not keep compiled steps on disk (default: kept in"
           " $DNAS_COMPILE_CACHE or ~/.cache/dnas/jax and reused by later runs)",
  )
  p.set_defaults(compiles=True)


def _cmd_search(args) -> int:
  from dnas import config as config_lib
  from dnas import search

  _init_distributed(args)

  config = config_lib.load_config(args.config, config_lib.SearchConfig, tiny=args.tiny)
  overrides = list(args.overrides)
  if args.strategy:
    overrides.append(f"strategy={args.strategy}")
  config = config_lib.apply_overrides(config, overrides)
  result = search.run_search(config, args.workdir, progress=not args.no_progress)
  from dnas import distributed

  if not distributed.is_main_process():
    return 0
  print("genotype:")
  print(result.genotype)
  metrics = result.metrics
  if config.strategy == "enas":
    if metrics:
      print(
          f"validation accuracy with the shared weights: best sampled cell"
          f" {metrics['derived_score']:.3f}; controller samples"
          f" {metrics['controller_mean_score']:.3f} on average, uniform random"
          f" cells {metrics['uniform_mean_score']:.3f}"
      )
    print(f"wrote {os.path.join(result.workdir, 'genotype.json')} and"
          f" {os.path.join(result.workdir, 'genotype_greedy.json')} (the controller's greedy cell)")
    return 0
  if metrics:
    print(
        f"search accuracy: train {metrics.get('train_acc', float('nan')):.3f},"
        f" validation {metrics.get('val_acc_eval', metrics.get('val_acc', float('nan'))):.3f}"
    )
  print(f"wrote {os.path.join(result.workdir, 'genotype.json')} and"
        f" {os.path.join(result.workdir, 'alphas.npz')}")
  return 0


def _cmd_train(args) -> int:
  from dnas import config as config_lib
  from dnas import distributed
  from dnas import train

  _init_distributed(args)
  config = config_lib.load_config(args.config, config_lib.TrainConfig, tiny=args.tiny)
  config = config_lib.apply_overrides(config, list(args.overrides))
  result = train.run_train(
      config, args.workdir, args.genotype, progress=not args.no_progress
  )
  if not distributed.is_main_process():
    return 0
  c = result.config
  print(
      f"trained {args.genotype or c.genotype} on {c.dataset or 'digits'}"
      f" ({c.layers} cells, {c.init_channels} channels, {c.epochs} epochs)"
  )
  print(f"test accuracy: {result.test_acc:.4f}")
  print(f"wrote {os.path.join(result.workdir, 'result.json')} and"
        f" {os.path.join(result.workdir, 'params.npz')}")
  return 0


def _parse_seeds(text: str) -> list[int]:
  try:
    if "," in text:
      return [int(s) for s in text.split(",") if s.strip()]
    return list(range(int(text)))
  except ValueError:
    raise UserError(f"--seeds {text!r}: give a count (4) or a list (0,1,2,3)") from None


def _cmd_reproduce(args) -> int:
  from dnas import config as config_lib
  from dnas import reproduce

  search_config = config_lib.load_config(
      args.search_config, config_lib.SearchConfig, tiny=args.tiny
  )
  train_config = config_lib.load_config(
      args.train_config, config_lib.TrainConfig, tiny=args.tiny
  )
  result = reproduce.run_reproduce(
      search_config, train_config, _parse_seeds(args.seeds), args.workdir,
      progress=not args.no_progress,
  )
  print(reproduce.format_table(result), end="")
  print(f"wrote {os.path.join(result.workdir, 'results.md')} and results.json")
  return 0


def _cmd_plot(args) -> int:
  from dnas import plot

  if bool(args.genotype) == bool(args.run):
    raise UserError("give exactly one of --genotype NAME|FILE.json or --run DIR")
  if args.genotype:
    from dnas import genotype as genotype_lib

    path = plot.plot_genotype(genotype_lib.resolve(args.genotype), args.out, title=args.genotype)
  else:
    path = plot.plot_alphas(args.run, args.out)
  print(f"wrote {path}")
  return 0


def _cmd_prepare(args) -> int:
  from dnas import data

  where = data.prepare(args.name, os.path.expanduser(args.data_dir))
  print(f"prepared {args.name} in {where}")
  return 0


_OVERRIDES_HELP = (
    "config overrides as key=value, e.g. epochs=10 batch_size=32"
    " hypergradient=second_order dataset=cifar10 primitives=none,skip_connect,sep_conv_3x3;"
    " every field of the config dataclass can be set (see dnas/config.py)"
)


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="dnas",
      description="Differentiable neural architecture search in JAX.",
  )
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser(
      "summary",
      help="parameter and multiply-add counts of a final network or the supernet",
      description=(
          "Counts trainable parameters (auxiliary head excluded, as in the"
          " DARTS paper; params_with_aux includes it) and forward multiply-adds"
          " per image of a final network built from a genotype, or of the"
          " search supernet."
      ),
  )
  p.add_argument("--genotype", help="zoo name (e.g. DARTS_V2) or a genotype JSON file")
  p.add_argument("--supernet", action="store_true", help="summarise the search supernet")
  p.add_argument(
      "--dataset",
      default="cifar10",
      help="dataset defaults for the final network: cifar10, cifar100, imagenet, digits, ...",
  )
  p.add_argument("--init-channels", type=int, help="C (cifar: 36, imagenet: 48, supernet: 16)")
  p.add_argument("--layers", type=int, help="cells (cifar: 20, imagenet: 14, supernet: 8)")
  p.add_argument("--classes", type=int, help="number of classes")
  p.add_argument("--in-channels", type=int, help="image channels")
  p.add_argument("--image-size", type=int, help="image height and width")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  p.set_defaults(func=_cmd_summary)

  p = sub.add_parser(
      "derive",
      help="derive a genotype from raw alphas (the DARTS rule)",
      description=(
          "Reads FILE.npz with arrays 'normal' and 'reduce' of raw logits,"
          " shape (14, 8) in PRIMITIVES order, and prints the genotype."
      ),
  )
  p.add_argument("--alphas", required=True, help="npz file with arrays normal and reduce")
  p.add_argument("--out", help="also write the genotype JSON here")
  p.add_argument("--json", action="store_true", help="print JSON (default when piped)")
  p.set_defaults(func=_cmd_derive)

  p = sub.add_parser(
      "search",
      help="run an architecture search (DARTS by default)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Runs a search and writes genotype.json, alphas.npz, metrics and"
          " checkpoints into --workdir. With no --config it searches the\n"
          "embedded digits data with a small supernet (a few minutes on a CPU).\n"
          "Running again on the same workdir resumes from its last checkpoint;\n"
          "a finished run is not redone.\n\n"
          "Configs are Python files (experiments/*.py) with get_config(tiny=False);\n"
          "--tiny asks for the small CPU variant. Override any field as key=value:\n"
          "  dnas search --config experiments/darts_cifar10_search_second_order.py \\\n"
          "      epochs=10 batch_size=32 --workdir runs/short"
      ),
  )
  p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
  p.add_argument("--config", help="experiment file defining get_config(tiny=False)")
  p.add_argument("--tiny", action="store_true", help="use the config's small CPU variant")
  p.add_argument("--strategy", help="darts or enas (same as strategy=...)")
  p.add_argument("--workdir", required=True, help="output directory (resumed if it holds a checkpoint)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  _add_distributed_flags(p)
  _add_compile_cache_flag(p)
  p.set_defaults(func=_cmd_search)

  p = sub.add_parser(
      "train",
      help="train the final network of a genotype (DARTS evaluation recipe)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Trains the standalone network built from a genotype with the DARTS\n"
          "evaluation recipe (SGD 0.025 cosine, momentum 0.9, weight decay 3e-4,\n"
          "batch 96, cutout, drop-path 0.2, auxiliary head 0.4, clip 5), evaluates\n"
          "every epoch and writes result.json (test accuracy) and params.npz.\n"
          "With no --config it trains on the embedded digits (a few minutes on a\n"
          "CPU). Running again on the same workdir resumes it.\n\n"
          "  dnas train --genotype DARTS_V2 --workdir runs/train\n"
          "  dnas train --config experiments/darts_cifar10_eval.py --workdir runs/c10"
      ),
  )
  p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP.replace(
      " hypergradient=second_order", "").replace(" primitives=none,skip_connect,sep_conv_3x3", ""))
  p.add_argument("--genotype", help="zoo name (e.g. DARTS_V2) or a genotype JSON file;"
                 " default: the config's genotype")
  p.add_argument("--config", help="experiment file defining get_config(tiny=False)")
  p.add_argument("--tiny", action="store_true", help="use the config's small CPU variant")
  p.add_argument("--workdir", required=True, help="output directory (resumed if it holds a checkpoint)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  _add_distributed_flags(p)
  _add_compile_cache_flag(p)
  p.set_defaults(func=_cmd_train)

  p = sub.add_parser(
      "reproduce",
      help="the DARTS protocol: N search seeds, each cell retrained, one results table",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Runs a search per seed, retrains every found cell and writes\n"
          "results.md / results.json: each cell's test accuracy, mean +/- std,\n"
          "and the best of N chosen by search validation accuracy. Sub-runs\n"
          "resume, so rerunning continues an interrupted reproduction.\n\n"
          "  dnas reproduce --search-config experiments/darts_cifar10_search_second_order.py \\\n"
          "      --train-config experiments/darts_cifar10_eval.py --seeds 4 --workdir runs/repro\n"
          "  dnas reproduce --tiny --seeds 2 --workdir runs/repro_tiny   # digits, minutes"
      ),
  )
  p.add_argument("--search-config", help="search experiment file (default: the digits search)")
  p.add_argument("--train-config", help="training experiment file (default: the digits training)")
  p.add_argument("--seeds", default="4", help="number of seeds (4) or a list (0,1,2,3)")
  p.add_argument("--tiny", action="store_true", help="use the configs' small CPU variants")
  p.add_argument("--workdir", required=True, help="parent directory of all runs")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  _add_compile_cache_flag(p)
  p.set_defaults(func=_cmd_reproduce)

  p = sub.add_parser(
      "plot",
      help="draw a genotype's cells, or a search's alphas over epochs",
  )
  p.add_argument("--genotype", help="zoo name or genotype JSON file: draw its normal and reduction cells")
  p.add_argument("--run", help="a search workdir: plot softmax(alpha) over epochs")
  p.add_argument("--out", required=True, help="output image: .png, .svg or .pdf")
  p.set_defaults(func=_cmd_plot)

  p = sub.add_parser(
      "prepare",
      help="download and prepare CIFAR-10/100 as TFDS ArrayRecord files (no TensorFlow)",
  )
  p.add_argument("name", help="cifar10 or cifar100")
  p.add_argument("--data-dir", default="~/tensorflow_datasets", help="TFDS data directory")
  p.set_defaults(func=_cmd_prepare)
  return parser


def main(argv: list[str] | None = None) -> int:
  """Entry point of the ``dnas`` console script."""
  parser = _build_parser()
  args = parser.parse_args(argv)
  compiles = getattr(args, "compiles", False)
  if argv is None and compiles:
    # A command that runs compiled steps starts again, once, with glibc's
    # malloc backing XLA:CPU's step buffers with transparent huge pages
    # (dnas/allocator.py): 1.3-1.5x on the DARTS_V2 training step on two
    # cores. Only the console script does this, never a caller of main()
    # in its own process.
    from dnas import allocator

    allocator.reexec_tuned()
  try:
    if compiles:
      _enable_compile_cache(args)
    return args.func(args)
  except UserError as error:
    message = " ".join(str(error).split("\n"))
    print(f"dnas: error: {message}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("dnas: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())

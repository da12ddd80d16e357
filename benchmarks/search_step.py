"""Times one DARTS search step on the standard search supernet.

The supernet of the paper (C=16, 8 cells, 4 nodes, the 8 DARTS primitives,
10 classes) on random 32x32x3 data, one compiled step = architecture update
plus weight update. Prints one JSON object:

  python benchmarks/search_step.py --order 1 --batch 64 --json
  python benchmarks/search_step.py --order 2 --batch 64 --json   # exact second order
  python benchmarks/search_step.py --order 2 --finite-difference --batch 64 --json  # DARTS eq. 8

Fields: img_per_s (batch / step time, as the reference's figures count it: a
step also reads a validation batch of the same size), step_s (median of --steps timed calls after
--warmup, each divided by its --steps-per-call steps, run as one lax.scan), compile_s (trace + compile of the first call; trace_s of it is tracing and lowering), peak_rss_mib,
device_peak_mib (an accelerator's peak memory in use; null on CPU, whose memory is
peak_rss_mib), user_s_per_step, sys_s_per_step and minor_faults_per_step (getrusage over the
timed steps), malloc_tuned (the benchmark restarted with
dnas.allocator.TUNABLES, as the dnas commands do; --system-malloc keeps
glibc's defaults), achieved_gflop_s (from the reference's per-image FLOP counts: first-order step
3.6 GFLOP, second-order 7.6 GFLOP per image), projected_search_h (the paper's
50-epoch CIFAR-10 search at this step time: 50 x 25k // batch steps), device and jax version; with --profile DIR,
kernels (kernel time by kind, benchmarks/_profile.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import _harness  # benchmarks/_harness.py, beside this script

GFLOP_PER_IMAGE = {1: 3.6, 2: 7.6}
# The paper's CIFAR-10 search: 50 epochs over the 25k-image training half.
SEARCH_EPOCHS, SEARCH_IMAGES_PER_EPOCH = 50, 25_000


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--order", type=int, choices=(1, 2), default=1)
  parser.add_argument("--finite-difference", action="store_true",
                      help="with --order 2: the paper's finite-difference hypergradient (eq. 8) instead of the exact one")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--init-channels", type=int, default=16)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--depthwise", default="auto", choices=("auto", "shift_vjp", "shift", "native"))
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--no-scan-edges", action="store_true", help="unroll every edge (Supernet(scan_edges=False))")
  parser.add_argument("--no-remat", action="store_true", help="keep every activation for the backward (Supernet(remat=False))")
  parser.add_argument("--devices", type=int, default=0,
                      help="on CPU: split the host into this many XLA devices and shard the batch over them (0: as jax finds it)")
  _harness.add_malloc_flag(parser)
  _harness.add_execution_flags(parser)
  _harness.add_profile_flag(parser)
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--verbose", action="store_true", help="report phases on stderr")
  args = parser.parse_args(argv)
  _harness.restart_tuned(args, argv)
  dump_dir = _harness.dump_for_profile(args, ("jit_step", "jit_many"))
  if args.devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
  if args.depthwise != "auto":
    os.environ["DNAS_DEPTHWISE"] = args.depthwise

  if args.finite_difference and args.order != 2:
    parser.error("--finite-difference is a second-order hypergradient: add --order 2")
  hypergradient = {1: "first_order", 2: "second_order"}[args.order]
  if args.finite_difference:
    hypergradient = "finite_difference"

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from dnas import config as config_lib
  from dnas import distributed
  from dnas import supernet
  from dnas.architects import darts

  config = config_lib.SearchConfig(
      init_channels=args.init_channels, layers=args.layers, epochs=50,
      batch_size=args.batch,
      hypergradient=hypergradient,
  )
  model = supernet.Supernet(
      in_channels=3, num_classes=10, C=args.init_channels, layers=args.layers,
      scan_edges=not args.no_scan_edges, remat=not args.no_remat,
      rngs=nnx.Rngs(0),
  )
  graphdef, weights, alphas, rest = supernet.split(model)
  architect = darts.Darts(graphdef, config, steps_per_epoch=390)
  state = architect.init(weights, alphas, rest)
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (args.batch, args.image_size, args.image_size, 3)
  train = (jax.random.normal(keys[0], shape, dtype), jax.random.randint(keys[1], (args.batch,), 0, 10))
  val = (jax.random.normal(keys[2], shape, dtype), jax.random.randint(keys[3], (args.batch,), 0, 10))
  mesh = distributed.data_mesh()
  distributed.check_batch(args.batch, mesh)
  state = distributed.put_replicated(state, mesh)
  train, val = jax.device_put((train, val), distributed.batch_sharded(mesh))
  k = args.steps_per_call
  step = jax.jit(_harness.repeated(architect.step, k, 1), donate_argnums=() if args.no_donate else (0,))
  started = time.perf_counter()
  lowered = step.lower(state, train, val)
  trace_s = time.perf_counter() - started
  if args.verbose:
    print(f"traced in {trace_s:.1f} s", file=sys.stderr, flush=True)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - started

  def call():
    nonlocal state
    state, metrics = compiled(state, train, val)
    return jax.block_until_ready(metrics)

  step_s, per_step, metrics = _harness.time_calls(call, args.warmup, args.steps, k)
  result = {
      "benchmark": "search_step",
      "order": args.order,
      "hypergradient": hypergradient,
      "batch": args.batch,
      "init_channels": args.init_channels,
      "layers": args.layers,
      "dtype": args.dtype,
      "scan_edges": not args.no_scan_edges,
      "remat": not args.no_remat,
      "steps_per_call": k,
      "donate": not args.no_donate,
      "depthwise": os.environ.get("DNAS_DEPTHWISE", "auto"),
      "img_per_s": args.batch / step_s,
      "step_s": step_s,
      "compile_s": compile_s,
      "trace_s": trace_s,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "device_peak_mib": _harness.device_peak_mib(jax),
      **per_step,
      "achieved_gflop_s": GFLOP_PER_IMAGE[args.order] * args.batch / step_s,
      "projected_search_h": SEARCH_EPOCHS * (SEARCH_IMAGES_PER_EPOCH // args.batch) * step_s / 3600,
      "device": str(jax.devices()[0].device_kind),
      "num_devices": jax.device_count(),
      "jax": jax.__version__,
      "malloc_tuned": _harness.malloc_tuned(),
      "loss": float(metrics["train_loss"]),
  }
  if args.profile:
    import _profile

    result["kernels"] = _profile.profile(call, args.profile, compiled.as_text(), dump_dir)
    _profile.print_summary(result["kernels"], sys.stderr)
  _harness.print_result(result, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())

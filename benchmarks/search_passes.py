"""Times the passes a DARTS search step is made of, each compiled on its own.

The search steps of ``benchmarks/search_step.py`` are sums of a few passes
over the supernet (``dnas.architects.darts``):

  first order        alpha_grad (validation batch) + weight_grad (the weight step)
  exact second order weight_grad (the virtual step) + both_grad (validation
                     gradient in w' and alpha) + mixed_jvp (forward mode over the
                     alpha gradient, DARTS eq. 7's mixed term) + weight_grad
  finite difference  weight_grad + both_grad + 2 x alpha_grad (eq. 8) + weight_grad

This script compiles each pass alone (``forward``, ``alpha_grad``,
``weight_grad``, ``both_grad``, ``mixed_jvp``) on the supernet of the search
benchmark, times them in interleaved rounds (so the machine's drift hits all
alike) and prints one JSON object with each pass's median seconds, its
compile seconds, and the step times and ratios the sums above predict:

  python benchmarks/search_passes.py --batch 64 --json
  python benchmarks/search_passes.py --batch 64 --json --profile /tmp/passes   # + kernel time by kind, per pass

The predicted first-order and second-order times can be compared with the
whole steps' (``search_step.py``): the difference is what XLA overlaps or
shares between passes compiled together, and the optimisers' updates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import _harness  # benchmarks/_harness.py, beside this script

PASSES = ("forward", "alpha_grad", "weight_grad", "both_grad", "mixed_jvp")


def predicted(t: dict) -> dict:
  """Step times and ratios predicted by summing the passes ``t`` (seconds)."""
  first = t["alpha_grad"] + t["weight_grad"]
  exact = 2 * t["weight_grad"] + t["both_grad"] + t["mixed_jvp"]
  finite = 2 * t["weight_grad"] + t["both_grad"] + 2 * t["alpha_grad"]
  return {
      "first_order_s": first,
      "second_order_s": exact,
      "finite_difference_s": finite,
      "second_over_first": exact / first,
      "finite_difference_over_first": finite / first,
      "mixed_jvp_over_alpha_grad": t["mixed_jvp"] / t["alpha_grad"],
      "both_grad_over_weight_grad": t["both_grad"] / t["weight_grad"],
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--init-channels", type=int, default=16)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
  parser.add_argument("--passes", default=",".join(PASSES),
                      help=f"comma-separated subset of {','.join(PASSES)} (the predictions need all but forward)")
  _harness.add_malloc_flag(parser)
  _harness.add_profile_flag(parser)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  names = [p for p in args.passes.split(",") if p]
  unknown = sorted(set(names) - set(PASSES))
  if unknown:
    parser.error(f"unknown pass {', '.join(unknown)}; choose from {', '.join(PASSES)}")
  if args.rounds < 1:
    parser.error(f"--rounds must be >= 1, got {args.rounds}")
  _harness.restart_tuned(args, argv)
  dump_dir = _harness.dump_for_profile(args, [f"jit_{name}" for name in names])

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from dnas import config as config_lib
  from dnas import supernet
  from dnas.architects import darts

  config = config_lib.SearchConfig(
      init_channels=args.init_channels, layers=args.layers, epochs=50, batch_size=args.batch,
  )
  model = supernet.Supernet(
      in_channels=3, num_classes=10, C=args.init_channels, layers=args.layers, rngs=nnx.Rngs(0),
  )
  graphdef, weights, alphas, rest = supernet.split(model)
  architect = darts.Darts(graphdef, config, steps_per_epoch=390)
  keys = jax.random.split(jax.random.key(0), 2)
  images = jax.random.normal(keys[0], (args.batch, args.image_size, args.image_size, 3))
  labels = jax.random.randint(keys[1], (args.batch,), 0, 10)
  # A direction in weight space for the mixed term (the step uses the
  # validation gradient; the cost does not depend on the values).
  direction = jax.tree.map(lambda w: jnp.full_like(w, 1e-3), weights)

  def loss(w, a):
    return architect.loss(w, a, rest, images, labels)

  alpha_grad = jax.grad(loss, argnums=1, has_aux=True)

  # Each pass returns only what the step uses, so XLA cannot drop its work.
  def forward(w, a, v):
    return loss(w, a)[0]

  def alpha_grad_(w, a, v):
    return alpha_grad(w, a)[0]

  def weight_grad(w, a, v):
    return jax.grad(loss, has_aux=True)(w, a)[0]

  def both_grad(w, a, v):
    return jax.grad(loss, argnums=(0, 1), has_aux=True)(w, a)[0]

  def mixed_jvp(w, a, v):
    return jax.jvp(lambda w: alpha_grad(w, a)[0], (w,), (v,))[1]

  functions = {"forward": forward, "alpha_grad": alpha_grad_, "weight_grad": weight_grad,
               "both_grad": both_grad, "mixed_jvp": mixed_jvp}
  compiled, compile_s = {}, {}
  for name in names:
    fn = functions[name]
    fn.__name__ = name  # names the module jit_<pass>, for the XLA dump
    started = time.perf_counter()
    compiled[name] = jax.jit(fn).lower(weights, alphas, direction).compile()
    compile_s[name] = time.perf_counter() - started
    jax.block_until_ready(compiled[name](weights, alphas, direction))  # warm-up
    print(f"{name}: compiled in {compile_s[name]:.1f} s", file=sys.stderr, flush=True)
  times = {name: [] for name in names}
  for _ in range(args.rounds):
    for name in names:
      started = time.perf_counter()
      jax.block_until_ready(compiled[name](weights, alphas, direction))
      times[name].append(time.perf_counter() - started)
  step_s = {name: statistics.median(ts) for name, ts in times.items()}
  result = {
      "benchmark": "search_passes",
      "batch": args.batch,
      "init_channels": args.init_channels,
      "layers": args.layers,
      "rounds": args.rounds,
      "pass_s": step_s,
      "compile_s": compile_s,
      "device": str(jax.devices()[0].device_kind),
      "jax": jax.__version__,
      "malloc_tuned": _harness.malloc_tuned(),
  }
  if {"alpha_grad", "weight_grad", "both_grad", "mixed_jvp"} <= set(names):
    result["predicted"] = predicted(step_s)
  if args.profile:
    import _profile

    result["kernels"] = {}
    for name in names:
      def run(name=name):
        jax.block_until_ready(compiled[name](weights, alphas, direction))

      result["kernels"][name] = _profile.profile(
          run, os.path.join(args.profile, name), compiled[name].as_text(), dump_dir)
      print(f"== {name}", file=sys.stderr)
      _profile.print_summary(result["kernels"][name], sys.stderr)
  _harness.print_result(result, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())

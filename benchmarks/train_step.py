"""Times one training step of the DARTS_V2 final network (``dnas train``'s step).

The paper's CIFAR-10 evaluation network (C=36, 20 cells, auxiliary head,
drop-path on) on random 32x32x3 data; one compiled step = forward, backward
and the SGD update, exactly the step ``dnas.train`` scans. Prints one JSON
object:

  python benchmarks/train_step.py --batch 96 --json
  python benchmarks/train_step.py --batch 32 --json     # the reference's 16.5 img/s

Fields: img_per_s (batch / step_s), step_s (median of --steps timed calls
after --warmup, each divided by its --steps-per-call steps), compile_s (trace + compile of the first call),
peak_rss_mib, device_peak_mib (an accelerator's peak memory in use; null on CPU),
user_s_per_step, sys_s_per_step and minor_faults_per_step
(getrusage over the timed steps), malloc_tuned (the benchmark restarted with
dnas.allocator.TUNABLES, as the dnas commands do; --system-malloc keeps
glibc's defaults), achieved_gflop_s (3 x the forward's 1.057 GFLOP per image for
forward + backward), device and jax version; with --profile DIR,
kernels (kernel time by kind, benchmarks/_profile.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import _harness  # benchmarks/_harness.py, beside this script

FORWARD_GFLOP_PER_IMAGE = 1.057  # DARTS_V2, C=36, 20 cells, 32x32 (PERF_NOTES.md)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=96)
  parser.add_argument("--genotype", default="DARTS_V2")
  parser.add_argument("--init-channels", type=int, default=36)
  parser.add_argument("--layers", type=int, default=20)
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--depthwise", default="auto", choices=("auto", "shift_vjp", "shift", "native"))
  _harness.add_malloc_flag(parser)
  _harness.add_execution_flags(parser)
  _harness.add_profile_flag(parser)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  _harness.restart_tuned(args, argv)
  dump_dir = _harness.dump_for_profile(args, ("jit_step", "jit_many"))
  if args.depthwise != "auto":
    os.environ["DNAS_DEPTHWISE"] = args.depthwise

  import jax
  import jax.numpy as jnp
  from flax import nnx
  import optax

  from dnas import config as config_lib
  from dnas import genotype as genotype_lib
  from dnas import network
  from dnas import train

  config = config_lib.TrainConfig(
      dataset="cifar10", init_channels=args.init_channels, layers=args.layers,
      epochs=600, batch_size=args.batch, cutout=16, crop_padding=4, flip=True,
  )
  model = network.build_network(
      genotype_lib.resolve(args.genotype), "cifar10", C=args.init_channels,
      layers=args.layers, rngs=nnx.Rngs(params=0),
  )
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = train._optimizer(config, steps_per_epoch=520)
  opt_state = optimizer.init(params)

  def step(params, rest, opt_state, images, labels, key):
    def loss_fn(params):
      net = nnx.merge(graphdef, params, rest, copy=True)
      logits, logits_aux = net(images, jnp.float32(0.1), key=key)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      loss += 0.4 * optax.softmax_cross_entropy_with_integer_labels(logits_aux, labels).mean()
      _, _, new_rest = nnx.split(net, nnx.Param, ...)
      return loss, new_rest

    (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_rest, opt_state, loss

  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  images = jax.random.normal(k1, (args.batch, 32, 32, 3))
  labels = jax.random.randint(k2, (args.batch,), 0, 10)
  k = args.steps_per_call
  jitted = jax.jit(_harness.repeated(step, k, 3), donate_argnums=() if args.no_donate else (0, 1, 2))
  started = time.perf_counter()
  lowered = jitted.lower(params, rest, opt_state, images, labels, k3)
  trace_s = time.perf_counter() - started
  compiled = lowered.compile()
  compile_s = time.perf_counter() - started

  def call():
    nonlocal params, rest, opt_state
    params, rest, opt_state, loss = compiled(params, rest, opt_state, images, labels, k3)
    return jax.block_until_ready(loss)

  step_s, per_step, loss = _harness.time_calls(call, args.warmup, args.steps, k)
  result = {
      "benchmark": "train_step",
      "genotype": args.genotype,
      "batch": args.batch,
      "init_channels": args.init_channels,
      "layers": args.layers,
      "depthwise": os.environ.get("DNAS_DEPTHWISE", "auto"),
      "steps_per_call": k,
      "donate": not args.no_donate,
      "img_per_s": args.batch / step_s,
      "step_s": step_s,
      "compile_s": compile_s,
      "trace_s": trace_s,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "device_peak_mib": _harness.device_peak_mib(jax),
      **per_step,
      "achieved_gflop_s": 3 * FORWARD_GFLOP_PER_IMAGE * args.batch / step_s,
      "device": str(jax.devices()[0].device_kind),
      "num_devices": jax.device_count(),
      "jax": jax.__version__,
      "malloc_tuned": _harness.malloc_tuned(),
      "loss": float(loss),
  }
  if args.profile:
    import _profile

    result["kernels"] = _profile.profile(call, args.profile, compiled.as_text(), dump_dir)
    _profile.print_summary(result["kernels"], sys.stderr)
  _harness.print_result(result, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())

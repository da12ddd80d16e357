"""What both benchmarks share: the malloc restart and per-step CPU figures."""

from __future__ import annotations

import json
import os
import resource
import statistics
import time

from dnas import allocator


def add_malloc_flag(parser) -> None:
  parser.add_argument("--system-malloc", action="store_true",
                      help="keep glibc's default malloc (by default the benchmark restarts with"
                           " dnas.allocator.TUNABLES, as the dnas commands do)")


def restart_tuned(args, argv) -> None:
  """Restarts with ``allocator.TUNABLES`` as the ``dnas`` commands do,
  unless ``--system-malloc`` or called with an argument list in-process."""
  if argv is None and not args.system_malloc:
    allocator.reexec_tuned()


def malloc_tuned() -> bool:
  return allocator.TUNABLES in os.environ.get("GLIBC_TUNABLES", "")


def per_step_usage(before, steps) -> dict:
  """CPU time and minor page faults per timed step, from getrusage."""
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {
      "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
      "sys_s_per_step": (after.ru_stime - before.ru_stime) / steps,
      "minor_faults_per_step": round((after.ru_minflt - before.ru_minflt) / steps),
  }


def time_calls(call, warmup: int, steps: int, k: int):
  """Runs ``call()`` (which blocks until its result is ready) ``warmup``
  times, then times ``steps`` calls of ``k`` steps each.

  Returns the median seconds per step, the getrusage figures per step over
  the timed calls (``per_step_usage``) and the last call's result.
  """
  for _ in range(warmup):
    call()
  times = []
  usage = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(steps):
    started = time.perf_counter()
    out = call()
    times.append((time.perf_counter() - started) / k)
  return statistics.median(times), per_step_usage(usage, steps * k), out


def add_execution_flags(parser) -> None:
  parser.add_argument("--steps-per-call", type=int, default=1,
                      help="steps run inside one compiled call, as a lax.scan (the dnas commands'"
                           " steps_per_call); step_s is a call's time divided by it")
  parser.add_argument("--no-donate", action="store_true",
                      help="do not donate the state's buffers to the step (the dnas commands donate them)")


def add_profile_flag(parser) -> None:
  parser.add_argument("--profile", metavar="DIR",
                      help="after timing, trace one more call into DIR with jax.profiler, dump the"
                           " program's HLO and LLVM IR there, and add its kernel time by kind"
                           " (benchmarks/_profile.py) to the output as 'kernels'; compile_s then"
                           " includes writing the dump, and JAX's persistent compilation cache is off")


def dump_for_profile(args, module_names) -> str | None:
  """With ``--profile DIR``: sets ``XLA_FLAGS`` so that XLA dumps the named
  modules into ``DIR/xla``, and turns JAX's persistent compilation cache off
  (a program loaded from it is not compiled, so not dumped); call before jax
  is imported. Returns that directory, or None without ``--profile``."""
  if not args.profile:
    return None
  import _profile

  os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  dump_dir = os.path.join(os.path.abspath(args.profile), "xla")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _profile.dump_flags(dump_dir, module_names)).strip()
  return dump_dir


def print_result(result: dict, as_json: bool) -> None:
  """The benchmark's result: one JSON line with ``--json``, else a field a line."""
  if as_json:
    print(json.dumps(result))
  else:
    width = max(map(len, result))
    for key, value in result.items():
      print(f"{key:>{width}}: {value}")


def repeated(step, k: int, n_carry: int):
  """``step`` run ``k`` times inside one ``lax.scan`` (``k == 1``: ``step``).

  The first ``n_carry`` arguments are carried (each iteration replaces them
  with the step's first ``n_carry`` outputs), the others are the same every
  iteration; returns the final carry and the last iteration's other outputs,
  so the result has ``step``'s structure.
  """
  if k < 1:
    raise SystemExit(f"--steps-per-call must be >= 1, got {k}")
  if k == 1:
    return step
  import jax

  def many(*args):
    const = args[n_carry:]

    def body(carry, _):
      out = step(*carry, *const)
      return tuple(out[:n_carry]), tuple(out[n_carry:])

    carry, others = jax.lax.scan(body, tuple(args[:n_carry]), None, length=k)
    return (*carry, *jax.tree.map(lambda x: x[-1], others))

  return many

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


def device_peak_mib(jax) -> float | None:
  """The accelerator's peak memory in use so far, MiB (the first local
  device's ``peak_bytes_in_use``); None where the backend keeps no such
  count (XLA:CPU, whose memory is the process's: ``peak_rss_mib``)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # backends without memory statistics raise or return None
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


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


def summary(out: str) -> str:
  """The table ``gpu.sh`` ends with: one row per step benchmark's JSON in
  ``out`` ("(none)" where it did not finish), then the passes and the step
  times their sums predict."""
  lines = [f"{'run':8} {'img/s':>8} {'step ms':>9} {'compile s':>9} {'dev MiB':>8}"
           f" {'GFLOP/s':>8} {'50-ep h':>8}"]
  for name in ("search2", "search1", "train96", "fd2"):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
      lines.append(f"{name:8} (none)")
      continue
    with open(path) as f:
      r = json.load(f)
    peak, hours = r.get("device_peak_mib"), r.get("projected_search_h")
    lines.append(
        f"{name:8} {r['img_per_s']:8.1f} {1e3 * r['step_s']:9.2f} {r['compile_s']:9.1f}"
        f" {'-' if peak is None else f'{peak:.0f}':>8} {r['achieved_gflop_s']:8.0f}"
        f" {'-' if hours is None else f'{hours:.2f}':>8}")
  path = os.path.join(out, "passes.json")
  if os.path.exists(path):
    with open(path) as f:
      r = json.load(f)
    lines.append("passes s " + json.dumps({k: round(v, 5) for k, v in r["pass_s"].items()}))
    if "predicted" in r:
      lines.append("predicted " + json.dumps({k: round(v, 4) for k, v in r["predicted"].items()}))
  return "\n".join(lines)


"""What both benchmarks share: the malloc restart and per-step CPU figures."""

from __future__ import annotations

import os
import resource

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

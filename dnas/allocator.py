"""glibc's malloc set up to back XLA:CPU's step buffers with huge pages.

XLA:CPU allocates a compiled step's temporary buffers with ``malloc`` at
every call and frees them when the call returns. Under glibc's defaults the
freed memory goes back to the kernel (large blocks are unmapped, the heaps of
the worker threads' arenas are deleted), so the next step faults every page
of its temporaries in again, 4 KiB at a time, each zero-filled by the
kernel: 550k minor page faults and 1.1-1.2 s of system time per DARTS_V2
training step at batch 32 on two CPU cores (a 2.1-2.4 s step), 230k faults
and 0.6 s per first-order search step (BENCHMARKS.md).

The glibc tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35 and later) has
malloc ask for transparent huge pages (``madvise(MADV_HUGEPAGE)``) for its
heaps and large blocks, so the same memory arrives 2 MiB per fault: 1.6k
faults, 0.3-0.7 s, and a 1.5-1.6 s training step. Memory still goes back to
the kernel and the peak RSS is the same. (Keeping the memory instead, with
one arena, no mmap and no trimming, removes the faults altogether but
serialises every thread's malloc on one fragmented heap: after an
in-process compile the step ran slower than with huge pages.) The kernel
must allow THP (``/sys/kernel/mm/transparent_hugepage/enabled`` set to
``madvise`` or ``always``); with ``never`` the tunable changes nothing.

glibc reads tunables only at start-up, so :func:`reexec_tuned` starts the
program again with :data:`TUNABLES` added to ``GLIBC_TUNABLES``. The
``dnas`` commands that compile do that; ``DNAS_MALLOC_TUNING=0`` turns it
off, and a ``GLIBC_TUNABLES`` that already sets a ``glibc.malloc`` tunable is
left as the user wrote it. A notebook or script gets the same effect by
starting Python with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its
environment.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

__all__ = ["TUNABLES", "tuned_environment", "reexec_tuned"]

TUNABLES = "glibc.malloc.hugetlb=1"

OPT_OUT = "DNAS_MALLOC_TUNING"


def _is_glibc() -> bool:
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _thp_mode() -> str | None:
  """The kernel's transparent huge page mode (``always``, ``madvise`` or
  ``never``), or None where the kernel has no THP."""
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
  """``environ`` with :data:`TUNABLES` added to ``GLIBC_TUNABLES``, or
  ``None`` where nothing is to change: not glibc, no transparent huge
  pages in the kernel, turned off with ``DNAS_MALLOC_TUNING=0``, or
  ``GLIBC_TUNABLES`` already setting a malloc tunable (the user's choice,
  or this module's after a restart)."""
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return None
  if not _is_glibc() or _thp_mode() not in ("always", "madvise"):
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc." in current:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{current}:{TUNABLES}" if current else TUNABLES
  return env


def reexec_tuned() -> None:
  """Starts this Python program again, same interpreter, flags and
  arguments, with :data:`TUNABLES` set; returns when nothing is to change.

  Call it first thing in a program's entry point, before anything has run
  that should not run twice: ``os.execve`` replaces the process (same pid,
  same open files), so nothing after the call runs in the first start.
  """
  env = tuned_environment(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

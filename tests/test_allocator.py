"""glibc's malloc tunable: when it is added, that a restart applies it
(measured by page faults, independently of XLA) and that only the console
script restarts."""

import os
import subprocess
import sys
import textwrap

import pytest

from dnas import allocator, cli

glibc_only = pytest.mark.skipif(
    not allocator._is_glibc(), reason="the tunables are glibc's (Linux)"
)
thp = pytest.mark.skipif(
    allocator._thp_mode() not in ("always", "madvise"),
    reason="the kernel offers no transparent huge pages",
)


@pytest.fixture
def thp_madvise(monkeypatch):
  monkeypatch.setattr(allocator, "_thp_mode", lambda: "madvise")


@glibc_only
def test_tuned_environment_adds_the_tunables_once(thp_madvise):
  env = allocator.tuned_environment({"PATH": "/bin"})
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": allocator.TUNABLES}
  # After the restart nothing is left to change: no second restart.
  assert allocator.tuned_environment(env) is None


@glibc_only
def test_tuned_environment_keeps_other_tunables_and_the_users_malloc(thp_madvise):
  other = "glibc.pthread.rseq=0"
  env = allocator.tuned_environment({"GLIBC_TUNABLES": other})
  assert env["GLIBC_TUNABLES"] == f"{other}:{allocator.TUNABLES}"
  users = "glibc.malloc.arena_max=2"
  assert allocator.tuned_environment({"GLIBC_TUNABLES": users}) is None


@pytest.mark.parametrize("value", ["0", "false", "off", "no"])
def test_tuned_environment_can_be_turned_off(value):
  assert allocator.tuned_environment({allocator.OPT_OUT: value}) is None


def test_tuned_environment_is_nothing_off_glibc(monkeypatch, thp_madvise):
  monkeypatch.setattr(allocator, "_is_glibc", lambda: False)
  assert allocator.tuned_environment({}) is None


@glibc_only
def test_tuned_environment_is_nothing_without_huge_pages(monkeypatch):
  monkeypatch.setattr(allocator, "_thp_mode", lambda: "never")
  assert allocator.tuned_environment({}) is None


# Starts, restarts through reexec_tuned, then counts the minor page faults of
# filling a malloc'ed block a second time after freeing the first: 64 MiB on
# the main thread, 48 MiB on another thread (XLA:CPU's buffers come from its
# worker threads). glibc's defaults map such blocks fresh (beyond the mmap
# threshold's 32 MiB ceiling) and unmap them on free, so every 4 KiB page
# faults again: 28k faults; in huge pages 0.5-1.1k.
_PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys, threading
    from dnas import allocator
    with open(sys.argv[1], "a") as log:
      log.write(" ".join(sys.argv[2:]) + "\\n")
    allocator.reexec_tuned()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def fill(n):
      p = libc.malloc(n)
      ctypes.memset(p, 1, n)
      libc.free(p)
    def faults(n, out):
      fill(n)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      fill(n)
      out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    out = []
    faults(64 << 20, out)
    worker = threading.Thread(target=faults, args=(48 << 20, out))
    worker.start()
    worker.join()
    print(sum(out))
    """
)


@glibc_only
@thp
@pytest.mark.parametrize("tuned", [True, False])
def test_restart_gives_large_blocks_huge_pages(tmp_path, tuned):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env[allocator.OPT_OUT] = "1" if tuned else "0"
  log = tmp_path / "starts.txt"
  proc = subprocess.run(
      [sys.executable, "-c", _PROBE, str(log), "a b", "c"],
      capture_output=True, text=True, timeout=120, env=env,
  )
  assert proc.returncode == 0, proc.stderr
  faults = int(proc.stdout)
  # Restarted once, with the same arguments.
  assert log.read_text().splitlines() == ["a b c"] * (2 if tuned else 1)
  if tuned:
    assert faults < 4000
  elif allocator._thp_mode() == "madvise":  # "always" gives huge pages anyway
    assert faults > 20000


class _Restarted(Exception):
  pass


def test_only_the_console_script_restarts(monkeypatch, tmp_path):
  calls = []

  def restart():
    calls.append(sys.argv[1])
    raise _Restarted

  monkeypatch.setattr(allocator, "reexec_tuned", restart)
  monkeypatch.setattr(sys, "argv", ["dnas", "search", "--workdir", str(tmp_path), "epochs=-1"])
  with pytest.raises(_Restarted):
    cli.main()
  # A command that compiles nothing does not restart.
  monkeypatch.setattr(sys, "argv", ["dnas", "derive", "--alphas", str(tmp_path / "none.npz")])
  assert cli.main() == 2
  # Nor does main() called with its arguments, in the caller's process.
  assert cli.main(["search", "--workdir", str(tmp_path), "epochs=-1"]) == 2
  assert calls == ["search"]

"""The benchmarks' shared helpers (benchmarks/_harness.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
sys.path.insert(0, BENCHMARKS)
import _harness  # noqa: E402


def _step(params, momentum, x, scale):
  """A stand-in training step: two carried arrays, two constants, a metric."""
  momentum = 0.9 * momentum + jnp.sin(params) * x
  params = params - scale * momentum
  return params, momentum, jnp.sum(params**2)


def test_repeated_runs_the_step_k_times_in_one_scan():
  params, momentum = jnp.linspace(-1.0, 1.0, 5), jnp.zeros(5)
  x, scale = jnp.float32(0.5), jnp.float32(0.1)
  p, m = params, momentum
  for _ in range(4):
    p, m, loss = _step(p, m, x, scale)
  many = jax.jit(_harness.repeated(_step, 4, 2))
  p4, m4, loss4 = many(params, momentum, x, scale)
  np.testing.assert_allclose(p4, p, rtol=1e-6)
  np.testing.assert_allclose(m4, m, rtol=1e-6)
  np.testing.assert_allclose(loss4, loss, rtol=1e-6)  # the last step's metric
  assert "while" in many.lower(params, momentum, x, scale).as_text()


def test_repeated_once_is_the_step_itself_and_zero_is_refused():
  assert _harness.repeated(_step, 1, 2) is _step
  with pytest.raises(SystemExit, match="--steps-per-call must be >= 1"):
    _harness.repeated(_step, 0, 2)


class _Device:
  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    if isinstance(self.stats, Exception):
      raise self.stats
    return self.stats


class _Backend:
  """Stands in for the ``jax`` module: its first local device's statistics."""

  def __init__(self, stats):
    self.device = _Device(stats)

  def local_devices(self):
    return [self.device]


def test_device_peak_memory_is_read_where_the_backend_keeps_it():
  assert _harness.device_peak_mib(jax) is None  # XLA:CPU: the process's RSS is the memory
  assert _harness.device_peak_mib(_Backend({"peak_bytes_in_use": 3 << 20, "bytes_in_use": 1})) == 3.0
  assert _harness.device_peak_mib(_Backend({"bytes_in_use": 1})) is None
  assert _harness.device_peak_mib(_Backend(None)) is None
  assert _harness.device_peak_mib(_Backend(RuntimeError("no statistics"))) is None


def test_gpu_script_keeps_within_its_budget_and_summarises(tmp_path):
  """With no budget left every benchmark is skipped, not started, and the
  run still writes its environment and a summary; the summary reads the
  fields the benchmarks print."""
  out = tmp_path / "gpu"
  env = dict(os.environ, DNAS_GPU_BUDGET_S="0", PYTHON=sys.executable)
  done = subprocess.run(["bash", os.path.join(BENCHMARKS, "gpu.sh"), str(out)],
                        env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  log = (out / "gpu.log").read_text()
  for name in ("search2", "search1", "train96", "passes", "fd2"):
    assert f"== {name}: skipped" in log
    assert f"{name:8} (none)" in log or name == "passes"
  assert f"jax {jax.__version__}" in (out / "env.txt").read_text()
  assert sorted(p.name for p in out.iterdir()) == ["env.txt", "gpu.log"]

  step = {"img_per_s": 640.0, "step_s": 0.1, "compile_s": 42.0, "device_peak_mib": 2048.0,
          "achieved_gflop_s": 4864.0, "projected_search_h": 0.54}
  (out / "search2.json").write_text(json.dumps(step))
  (out / "train96.json").write_text(json.dumps(dict(step, device_peak_mib=None, projected_search_h=None)))
  (out / "passes.json").write_text(json.dumps({"pass_s": {"forward": 0.01}, "predicted": {"second_over_first": 2.5}}))
  table = _harness.summary(str(out)).splitlines()
  assert table[1].split() == ["search2", "640.0", "100.00", "42.0", "2048", "4864", "0.54"]
  assert table[2].split() == ["search1", "(none)"]
  assert table[3].split() == ["train96", "640.0", "100.00", "42.0", "-", "4864", "-"]
  assert table[-1] == 'predicted {"second_over_first": 2.5}'

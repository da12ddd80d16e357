"""The benchmarks' kernel profile (benchmarks/_profile.py, --profile)."""

import glob
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
sys.path.insert(0, BENCHMARKS)
import _profile  # noqa: E402


def test_kernel_categories():
  assert _profile.category("ynn_fusion.3", {"fusion", "dot", "parameter"}) == "ynnpack matmul"
  assert _profile.category("ynn_fusion", {"fusion", "reduce", "parameter"}) == "ynnpack reduction"
  assert _profile.category("dot.2", {"dot"}) == "xla matmul"
  assert _profile.category("multiply_reduce_fusion", {"fusion", "multiply", "reduce"}) == "fused reduction"
  assert _profile.category("maximum_pad_fusion", {"fusion", "maximum", "pad"}) == "data movement"
  assert _profile.category("wrapped_dynamic-slice", {"fusion", "dynamic-slice", "parameter"}) == "data movement"
  assert _profile.category("add_bitcast_fusion", {"fusion", "add", "multiply", "slice"}) == "elementwise fusion"
  assert _profile.category("while.2", {"while"}) == "control flow"


def test_module_name_needs_hlo_text():
  assert _profile.module_name("HloModule jit_step, entry_computation_layout={}\n") == "jit_step"
  with pytest.raises(ValueError, match="HloModule"):
    _profile.module_name("not hlo")


def test_summary_of_a_real_trace_counts_every_kernel_call(tmp_path):
  def f(x, w):
    y = jax.nn.relu(x @ w)
    # A variadic reduction of six arrays: its tuple type prints with
    # /*index=5*/ comments.
    sums = jax.lax.reduce([y * k for k in range(6)], [jnp.float32(0)] * 6,
                          lambda a, b: [u + v for u, v in zip(a, b)], (1,))
    return jnp.sum(jnp.pad(y, 1) ** 2, axis=0) + jnp.tanh(y[0])[None].sum() + sum(sums)[:34]

  x = jax.random.normal(jax.random.key(0), (512, 64))
  w = jax.random.normal(jax.random.key(1), (64, 32))
  compiled = jax.jit(f).lower(x, w).compile()
  hlo = compiled.as_text()
  calls = 3
  summary = _profile.profile(lambda: jax.block_until_ready(compiled(x, w)), str(tmp_path), hlo, calls=calls)
  assert (tmp_path / "program.hlo.txt").read_text() == hlo
  rows = summary["by_category"]
  assert summary["kernel_ms"] > 0
  assert sum(r["ms"] for r in rows.values()) == pytest.approx(summary["kernel_ms"], abs=0.1 * len(rows))
  assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=0.01)
  # Independent of the trace: the HLO's own count of kernels of each kind.
  ops = _profile.parse_hlo(hlo)
  entry = hlo[hlo.index("ENTRY"):]
  defined = re.findall(r"^\s+(?:ROOT )?%?([\w.\-]+) = ", entry, re.M)
  assert "/*index=5*/" in entry and defined
  assert set(defined) <= set(ops), set(defined) - set(ops)
  scheduled = {name for name in ops if f"%{name} = " in entry or f"\n  {name} = " in entry}
  expected = {}
  for name in scheduled:
    if not (ops[name] & {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
            and "fusion" not in ops[name]):
      kind = _profile.category(name, ops[name])
      expected[kind] = expected.get(kind, 0) + 1
  matmuls = {k: v for k, v in expected.items() if "matmul" in k}
  assert matmuls, expected
  for kind, count in matmuls.items():
    assert rows[kind]["calls"] == count
  for row in summary["top_kernels"]:
    assert any(name.split(".")[0] == row["kernel"] or name == row["kernel"] for name in ops), row


def test_passes_benchmark_profile_end_to_end(tmp_path):
  """``search_passes.py --profile``: timing, per-pass kernel tables, and the
  vector/scalar split read from the XLA dump of the passes' own modules."""
  out = subprocess.run(
      [sys.executable, os.path.join(BENCHMARKS, "search_passes.py"), "--init-channels", "4",
       "--layers", "1", "--image-size", "8", "--batch", "4", "--rounds", "1",
       "--passes", "forward,alpha_grad", "--json", "--profile", str(tmp_path)],
      capture_output=True, text=True, timeout=600, check=True,
  )
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(result["pass_s"]) == {"forward", "alpha_grad"}
  assert "predicted" not in result  # needs all four gradient passes
  for name in ("forward", "alpha_grad"):
    kernels = result["kernels"][name]
    assert kernels["kernel_ms"] > 0
    assert kernels["generated_code_ms"]["vector"] > 0
    # Every kernel XLA generated is classified, those sharing another's
    # compiled kernel included (the dump holds one IR per shared kernel).
    generated = sum(row["ms"] for kind, row in kernels["by_category"].items()
                    if kind in ("elementwise fusion", "fused reduction", "data movement", "reduce-window"))
    assert sum(kernels["generated_code_ms"].values()) >= 0.9 * generated - 0.5
    assert (tmp_path / name / "program.hlo.txt").exists()
    assert glob.glob(str(tmp_path / "xla" / f"module_*.jit_{name}.*ir-with-opt.ll"))
  # The alpha gradient is a forward plus a backward pass: it runs more
  # kernels (counted, not timed: times under a parallel test run are noise).
  calls = {name: sum(row["calls"] for row in result["kernels"][name]["by_category"].values())
           for name in ("forward", "alpha_grad")}
  assert calls["alpha_grad"] > calls["forward"] > 0
  assert not glob.glob(str(tmp_path / "xla" / "*obj-file*"))
  assert "kernel time per call" in out.stderr


def test_passes_benchmark_refuses_an_unknown_pass():
  out = subprocess.run(
      [sys.executable, os.path.join(BENCHMARKS, "search_passes.py"), "--passes", "forward,sideways"],
      capture_output=True, text=True, timeout=120,
  )
  assert out.returncode == 2
  assert "unknown pass sideways" in out.stderr


def test_a_trace_without_the_program_gives_a_note_not_a_crash(tmp_path):
  """The benchmark has already run when it profiles: a trace with none of
  the program's kernels (here: the program is never called) must not lose
  its result."""
  compiled = jax.jit(lambda x: jnp.sin(x) * 2).lower(jnp.ones(8)).compile()
  summary = _profile.profile(lambda: None, str(tmp_path), compiled.as_text())
  assert "kernel_ms" not in summary
  assert summary["trace_dir"] == str(tmp_path / "trace")
  assert summary["note"].startswith("no kernel table")

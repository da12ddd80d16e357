"""The command line: published counts, derive, and one-line errors with exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dnas import genotype as genotype_lib


def _dnas(*args):
  return subprocess.run(
      [sys.executable, "-m", "dnas.cli", *args], capture_output=True, text=True, timeout=600
  )


def test_summary_darts_v2_cifar10_matches_the_reference_count():
  proc = _dnas("summary", "--genotype", "DARTS_V2", "--dataset", "cifar10", "--json")
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)
  assert result["params"] == 3349342  # quark0/darts count behind the paper's 3.3M
  assert abs(result["macs"] - 528e6) / 528e6 < 0.02
  assert result["params_with_aux"] > result["params"]


def test_derive_prints_the_darts_rule_genotype(tmp_path):
  rng = np.random.default_rng(0)
  normal, reduce = rng.normal(size=(14, 8)), rng.normal(size=(14, 8))
  np.savez(tmp_path / "alphas.npz", normal=normal, reduce=reduce)
  proc = _dnas("derive", "--alphas", str(tmp_path / "alphas.npz"), "--json")
  assert proc.returncode == 0, proc.stderr
  assert genotype_lib.from_json(proc.stdout) == genotype_lib.derive(normal, reduce)


def _write_bad_alphas(tmp_path, kind):
  path = tmp_path / "alphas.npz"
  if kind == "wrong-shape":
    np.savez(path, normal=np.zeros((14, 7)), reduce=np.zeros((14, 7)))
  elif kind == "nan":
    normal = np.zeros((14, 8))
    normal[3, 2] = np.nan
    np.savez(path, normal=normal, reduce=np.zeros((14, 8)))
  elif kind == "missing-array":
    np.savez(path, normal=np.zeros((14, 8)))
  elif kind == "not-npz":
    path.write_text("hello")
  return path


def _write_bad_genotype(tmp_path, kind):
  good = genotype_lib.from_zoo("DARTS_V2").to_dict()
  path = tmp_path / "g.json"
  if kind == "unknown-op":
    good["normal"][0][0] = "conv_9x9"
  elif kind == "bad-input-index":
    good["normal"][0][1] = 7
  elif kind == "wrong-edge-count":
    good["normal"] = good["normal"][:-1]
  if kind == "malformed":
    path.write_text("{not json")
  else:
    path.write_text(json.dumps(good))
  return path


@pytest.mark.parametrize("kind", ["wrong-shape", "nan", "missing-array", "not-npz"])
def test_derive_bad_alphas_is_one_line_exit_2(tmp_path, kind):
  proc = _dnas("derive", "--alphas", str(_write_bad_alphas(tmp_path, kind)))
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith("dnas: error: ")
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["unknown-op", "bad-input-index", "wrong-edge-count", "malformed"])
def test_bad_genotype_file_is_one_line_exit_2(tmp_path, kind):
  proc = _dnas("plot", "--genotype", str(_write_bad_genotype(tmp_path, kind)),
               "--out", str(tmp_path / "cell.png"))
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not (tmp_path / "cell.png").exists()


def test_unknown_genotype_name_lists_known_ones(tmp_path):
  proc = _dnas("plot", "--genotype", "DARTS_V9", "--out", str(tmp_path / "cell.png"))
  assert proc.returncode == 2
  assert "DARTS_V2" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_plot_writes_an_image(tmp_path):
  proc = _dnas("plot", "--genotype", "DARTS_V2", "--out", str(tmp_path / "cell.png"))
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "cell.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compiling_commands_keep_a_compile_cache_and_can_opt_out():
  from dnas import cli

  parser = cli._build_parser()
  for argv in (["search", "--workdir", "w"], ["train", "--workdir", "w"],
               ["reproduce", "--workdir", "w"]):
    args = parser.parse_args(argv)
    assert args.compiles and not args.no_compile_cache
    assert parser.parse_args(argv + ["--no-compile-cache"]).no_compile_cache
  assert not getattr(parser.parse_args(["derive", "--alphas", "a.npz"]), "compiles", False)


_CACHE_PROBE = """
import argparse, sys
from dnas import cli
cli._enable_compile_cache(argparse.Namespace(no_compile_cache=sys.argv[1] == "off"))
import jax, jax.numpy as jnp
print(float(jax.jit(lambda x: jnp.sin(x) * 2)(1.0)), jax.config.jax_compilation_cache_max_size)
"""


@pytest.mark.parametrize("case", ["on", "off", "user-cache", "unwritable"])
def test_compile_cache_directory(tmp_path, case):
  """On by default in DNAS_COMPILE_CACHE, off on request, the user's own
  JAX cache respected, and an unusable directory one warning line."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  ours = tmp_path / "cache"
  env["DNAS_COMPILE_CACHE"] = str(ours)
  if case == "user-cache":
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "users")
  if case == "unwritable":
    (tmp_path / "file").write_text("")
    ours = tmp_path / "file" / "cache"
    env["DNAS_COMPILE_CACHE"] = str(ours)
  proc = subprocess.run(
      [sys.executable, "-c", _CACHE_PROBE, case], capture_output=True, text=True,
      timeout=300, env=env,
  )
  assert proc.returncode == 0, proc.stderr
  value, cap = proc.stdout.split()
  assert abs(float(value) - 2 * np.sin(1.0)) < 1e-6
  assert int(cap) == (2 << 30 if case == "on" else -1)
  if case == "on":
    # The compiled program was written there, under the machine's fingerprint.
    (scoped,) = ours.iterdir()
    assert len(scoped.name) == 16 and any(scoped.iterdir())
  elif case == "user-cache":
    assert not ours.exists() and any((tmp_path / "users").iterdir())
  elif case == "off":
    assert not ours.exists()
  else:
    warning = "dnas: warning: compiling without a cache: cannot create"
    assert sum(line.startswith(warning) for line in proc.stderr.splitlines()) == 1

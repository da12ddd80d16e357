#!/usr/bin/env bash
# The accelerator figures of BENCHMARKS.md in one call, inside one time budget.
#
#   bash benchmarks/gpu.sh OUTDIR
#
# Runs, most wanted first, each under `timeout` so that one slow compile
# cannot take the rest of the budget with it:
#   search2.json  exact second-order search step, batch 64 (projected_search_h:
#                 the paper's 50-epoch CIFAR-10 search at this step time)
#   search1.json  first-order search step, batch 64
#   train96.json  DARTS_V2 final-network training step, batch 96
#   passes.json   the search step's passes, each compiled alone (search_passes.py)
#   fd2.json      second order by the paper's finite difference (eq. 8)
# and writes env.txt (the machine, the Python, jax and its devices) and
# gpu.log (every benchmark's stderr, then a summary table), 7 files in all.
# Each JSON is written when its benchmark ends, so a run cut short keeps
# what finished. Needs jax, flax, optax and numpy; nothing is installed and
# nothing is downloaded (the data modules are not imported).
#
# Environment: DNAS_GPU_BUDGET_S (whole run, default 560 s), PYTHON (default
# python3), DNAS_SEARCH_ARGS / DNAS_TRAIN_ARGS (appended to the search and
# training benchmarks' arguments, flags that each of their scripts takes: a
# smaller network for a trial run on CPU).
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
mkdir -p "$out" || exit 2
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
budget=${DNAS_GPU_BUDGET_S:-560}
search_args=${DNAS_SEARCH_ARGS:-}
train_args=${DNAS_TRAIN_ARGS:-}
export PYTHONPATH="$root:$root/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
log="$out/gpu.log"
: >"$log"

{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"
  "$py" -c 'import sys, jax, flax, optax; print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__); print("devices", jax.devices())'
} >"$out/env.txt" 2>&1
cat "$out/env.txt" >>"$log"

# run NAME CAP_S SCRIPT ARGS...: the benchmark under min(CAP_S, what is left).
run() {
  local name=$1 cap=$2 script=$3
  shift 3
  local left=$((budget - (SECONDS - start)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 30)); then
    echo "== $name: skipped, ${left} s of the budget left" >>"$log"
    return
  fi
  echo "== $name (limit ${limit} s): $script $*" >>"$log"
  local began=$SECONDS
  timeout "$limit" "$py" "$root/benchmarks/$script" "$@" --json >"$out/$name.json.part" 2>>"$log"
  local rc=$?
  if ((rc == 0)) && [[ -s "$out/$name.json.part" ]]; then
    mv "$out/$name.json.part" "$out/$name.json"
  else
    rm -f "$out/$name.json.part"
    echo "== $name: FAILED (exit $rc; 124 = over its limit)" >>"$log"
  fi
  echo "== $name: $((SECONDS - began)) s" >>"$log"
}

# shellcheck disable=SC2086  # the *_args are word lists on purpose
{
  run search2 300 search_step.py --order 2 --batch 64 --steps 20 $search_args
  run search1 200 search_step.py --order 1 --batch 64 --steps 20 $search_args
  run train96 200 train_step.py --batch 96 --steps 20 $train_args
  run passes 300 search_passes.py --batch 64 --rounds 20 $search_args
  run fd2 200 search_step.py --order 2 --finite-difference --batch 64 --steps 20 $search_args
}

"$py" -c 'import sys, _harness; print(_harness.summary(sys.argv[1]))' "$out" >>"$log" 2>&1
echo "total $((SECONDS - start)) s" >>"$log"
tail -n 12 "$log"

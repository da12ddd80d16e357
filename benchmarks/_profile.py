"""Where a compiled step's time goes, by kernel: the benchmarks' ``--profile``.

XLA:CPU runs a compiled program as a sequence of kernels (thunks), each
named after the HLO instruction it executes: ``ynn_fusion.12`` (an
instruction that XLA hands to YNNPACK), ``add_bitcast_fusion.3`` (a loop
fusion XLA generates code for), ``dot.5``, ``while.2``. A ``jax.profiler``
trace records one event per kernel call; the optimised HLO says what each
instruction computes; with an XLA dump of the same module (``--xla_dump_to``),
the LLVM IR of each generated kernel says whether LLVM vectorised it.
``summarize`` joins the three into kernel time by kind, which is how every
"what bounds it" in BENCHMARKS.md was measured.

Kernel times are summed over the threads that ran them, so on two cores they
add up to more than the step's wall time; events whose name is not an
instruction of the program (Python, the runtime, "end:" markers) are not
counted, and neither are control-flow instructions (``while``,
``conditional``, ``call``), whose kernels are counted themselves.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

_CONTROL_FLOW = frozenset({"while", "conditional", "call"})
_DATA_MOVEMENT = frozenset({"pad", "concatenate", "dynamic-update-slice", "transpose", "copy"})
# Opcodes that move or view data without arithmetic.
_NO_ARITHMETIC = frozenset({"fusion", "parameter", "constant", "bitcast", "broadcast", "reshape",
                            "slice", "dynamic-slice", "iota", "convert", "tuple", "get-tuple-element"})
# What differs between two instances of the same computation: instruction
# names and source metadata.
_NAMES_AND_METADATA = re.compile(r"%[\w.\-]+|, metadata=\{.*")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{$")
_INSTRUCTION = re.compile(
    r"^\s+(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) ([\w\-]+)\((.*)$"
)
_CALLS = re.compile(r"(?:calls|body|to_apply)=%?([\w.\-]+)")


def dump_flags(directory: str, module_names) -> str:
  """XLA flags that dump the named modules (HLO and per-kernel LLVM IR) into
  ``directory``; set them in ``XLA_FLAGS`` before jax starts its backend."""
  names = "|".join(re.escape(n) for n in module_names)
  return f"--xla_dump_to={directory} --xla_dump_hlo_module_re=^(?:{names})$"


def _computations(hlo_text: str) -> dict[str, list[tuple[str, str, str, str]]]:
  """Computation name -> its instructions as (name, opcode, operands and
  attributes, whole line)."""
  computations: dict[str, list[tuple[str, str, str, str]]] = {}
  current = None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line)
    if match and not line.startswith(" "):
      current = computations.setdefault(match.group(1), [])
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      current.append((*match.groups(), line))
  return computations


def _called(rest: str) -> str | None:
  called = _CALLS.search(rest)
  return called.group(1) if called else None


def parse_hlo(hlo_text: str) -> dict[str, set[str]]:
  """Instruction name -> the opcodes it executes: its own, and for a fusion
  (or a YNNPACK fusion) those of the computation it calls."""
  computations = _computations(hlo_text)
  ops = {}
  for instructions in computations.values():
    for name, opcode, rest, _ in instructions:
      executed = {opcode}
      if opcode == "fusion":
        executed |= {op for _, op, _, _ in computations.get(_called(rest), [])}
      ops[name] = executed
  return ops


def fusion_fingerprints(hlo_text: str) -> dict[str, int]:
  """Fusion instruction name -> a fingerprint of the computation it runs,
  equal for fusions that compute the same thing on the same shapes.

  XLA:CPU compiles such fusions once and shares the kernel, so the dump
  holds the IR of one of them; the fingerprint finds it for the others.
  """
  computations = _computations(hlo_text)
  fingerprints = {}
  for instructions in computations.values():
    for name, opcode, rest, _ in instructions:
      if opcode != "fusion":
        continue
      body = [_NAMES_AND_METADATA.sub("", line) for *_, line in computations.get(_called(rest), [])]
      fingerprints[name] = hash((_NAMES_AND_METADATA.sub("", rest), *body))
  return fingerprints


def category(name: str, ops: set[str]) -> str:
  """A kernel's kind, from its instruction name and the opcodes it runs."""
  if name.startswith("ynn_fusion"):
    if "dot" in ops:
      return "ynnpack matmul"
    if "reduce" in ops:
      return "ynnpack reduction"
    return "ynnpack other"
  if ops & _CONTROL_FLOW and "fusion" not in ops:
    return "control flow"
  if "dot" in ops:
    return "xla matmul"
  if "convolution" in ops:
    return "convolution"
  if "reduce-window" in ops:
    return "reduce-window"
  if "reduce" in ops:
    return "fused reduction" if "fusion" in ops else "reduction"
  if ops & _DATA_MOVEMENT or ops <= _NO_ARITHMETIC:
    return "data movement"
  if "fusion" in ops:
    return "elementwise fusion"
  return "other: " + "+".join(sorted(ops))


def kernel_events(trace_dir: str):
  """(name, duration in microseconds) of every complete event in the newest
  trace under ``trace_dir``."""
  paths = sorted(
      glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
      key=os.path.getmtime,
  )
  if not paths:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  for event in events:
    if event.get("ph") == "X" and "dur" in event:
      yield event["name"], float(event["dur"])


def module_name(hlo_text: str) -> str:
  """The name on the HLO's ``HloModule`` line (``jit_`` and the function's)."""
  match = re.match(r"\s*HloModule ([\w.\-]+)", hlo_text)
  if not match:
    raise ValueError("not HLO text: it does not start with an HloModule line")
  return match.group(1)


def code_kinds(dump_dir: str, module: str) -> dict[str, str]:
  """Kernel name -> "vector" when its optimised LLVM IR has vector float
  arithmetic, "scalar" when it only has scalar float arithmetic, "none"
  otherwise (pure data movement); for the kernels of the dumped modules
  named ``module``."""
  kinds = {}
  pattern = f"module_*.{glob.escape(module)}.*ir-with-opt.ll"
  for path in glob.glob(os.path.join(dump_dir, pattern)):
    with open(path) as f:
      text = f.read()
    for match in re.finditer(r"^define [^@\n]*@([\w.\-]+)\(.*?^}", text, re.M | re.S):
      body = match.group(0)
      name = re.sub(r"_kernel$", "", match.group(1))  # elemental kernels: <instruction>_kernel
      if re.search(r"<\d+ x float>", body):
        kinds[name] = "vector"
      elif re.search(r"\bf(?:add|mul|sub|div) (?:[a-z]+ )*float\b", body):
        kinds[name] = "scalar"
      else:
        kinds[name] = "none"
  return kinds


def summarize(trace_dir: str, hlo_text: str, dump_dir: str | None = None,
              calls: int = 1, top: int = 12) -> dict:
  """Kernel time per call of the profiled program, by kind.

  Args:
    trace_dir: a ``jax.profiler`` trace of ``calls`` calls of the program.
    hlo_text: the program's optimised HLO (``compiled.as_text()``).
    dump_dir: an XLA dump of the same module, for the vector/scalar split
      of the kernels XLA generated (YNNPACK's and Eigen's are not in it).
    calls: how many calls the trace holds; times are per call.
    top: how many of the largest kinds of kernel to list by name.

  Returns:
    ``kernel_ms`` (all kernels), ``by_category`` (ms, share, calls),
    ``top_kernels`` (ms per instruction name without its ".N" and
    category) and, with ``dump_dir``, ``generated_code_ms`` (vector,
    scalar, none). "data movement" is pad, concatenate, update, slice,
    transpose and copy kernels, with whatever elementwise work is fused
    into them.
  """
  ops = parse_hlo(hlo_text)
  kinds = code_kinds(dump_dir, module_name(hlo_text)) if dump_dir else {}
  if kinds:
    # Fusions that share a kernel with a dumped one get its kind.
    fingerprints = fusion_fingerprints(hlo_text)
    by_fingerprint = {fingerprints[n]: k for n, k in kinds.items() if n in fingerprints}
    for name, fingerprint in fingerprints.items():
      if name not in kinds and fingerprint in by_fingerprint:
        kinds[name] = by_fingerprint[fingerprint]
  by_category = collections.Counter()
  counts = collections.Counter()
  by_kernel = collections.Counter()
  code = collections.Counter()
  for name, dur in kernel_events(trace_dir):
    if name not in ops:
      continue  # Python, the runtime, "end:" markers
    kind = category(name, ops[name])
    if kind == "control flow":
      continue  # the kernels inside are counted themselves
    by_category[kind] += dur
    counts[kind] += 1
    by_kernel[(re.sub(r"\.\d+$", "", name), kind)] += dur
    if name in kinds:
      code[kinds[name]] += dur
  total = sum(by_category.values())
  if not total:
    raise ValueError(f"no kernel of the program found in the trace under {trace_dir}")
  per_call = lambda us: round(us / 1e3 / calls, 1)
  summary = {
      "kernel_ms": per_call(total),
      "by_category": {
          kind: {"ms": per_call(us), "share": round(us / total, 3), "calls": counts[kind] // calls}
          for kind, us in by_category.most_common()
      },
      "top_kernels": [
          {"kernel": base, "ms": per_call(us), "category": kind}
          for (base, kind), us in by_kernel.most_common(top)
      ],
  }
  if dump_dir:
    summary["generated_code_ms"] = {kind: per_call(code[kind]) for kind in ("vector", "scalar", "none")}
  return summary


def profile(run, directory: str, hlo_text: str, dump_dir: str | None = None, calls: int = 1) -> dict:
  """Traces ``calls`` calls of ``run()`` (which must block until its result
  is ready) into ``directory``, writes the HLO beside it and summarises.

  The kernel table is XLA:CPU's (its kernels carry the HLO instructions'
  names); on another backend, or if no kernel of the program is in the
  trace, the summary says so and where the trace is (for Perfetto or
  TensorBoard) instead of failing after the benchmark has run.
  """
  import jax

  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "program.hlo.txt"), "w") as f:
    f.write(hlo_text)
  trace_dir = os.path.join(directory, "trace")
  with jax.profiler.trace(trace_dir):
    for _ in range(calls):
      run()
  if jax.default_backend() != "cpu":
    return {"trace_dir": trace_dir,
            "note": f"kernel table for XLA:CPU only; open the {jax.default_backend()} trace in Perfetto or TensorBoard"}
  if dump_dir and not glob.glob(os.path.join(dump_dir, "*.ir-with-opt.ll")):
    dump_dir = None
  try:
    summary = summarize(trace_dir, hlo_text, dump_dir, calls=calls)
  except (FileNotFoundError, ValueError) as error:
    return {"trace_dir": trace_dir, "note": f"no kernel table: {error}"}
  summary["trace_dir"] = trace_dir
  if dump_dir:
    # Keep the HLO and the optimised IR; the unoptimised IR and the object
    # files are most of the dump's size.
    for pattern in ("*.ir-no-opt.ll", "*obj-file*"):
      for path in glob.glob(os.path.join(dump_dir, pattern)):
        os.remove(path)
  return summary


def print_summary(summary: dict, file) -> None:
  """The summary as a table (the benchmarks print it on stderr)."""
  if "kernel_ms" not in summary:
    print(f"profile: {summary['note']} ({summary['trace_dir']})", file=file)
    return
  print(f"kernel time per call: {summary['kernel_ms']} ms (trace: {summary['trace_dir']})", file=file)
  for kind, row in summary["by_category"].items():
    print(f"  {row['ms']:9.1f} ms {100 * row['share']:5.1f}% {row['calls']:6d} calls  {kind}", file=file)
  if "generated_code_ms" in summary:
    code = summary["generated_code_ms"]
    print("  XLA-generated kernels: " + ", ".join(f"{k} {v} ms" for k, v in code.items()), file=file)
  print("  largest kernels:", file=file)
  for row in summary["top_kernels"]:
    print(f"  {row['ms']:9.1f} ms  {row['kernel']} ({row['category']})", file=file)

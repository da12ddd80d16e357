"""Data parallelism over a device mesh, and multi-host start-up.

Every run uses all devices it can see: a one-axis ``Mesh`` named ``'data'``.
The global batch (what the config says) is sharded along it; weights, alphas
and optimiser states are replicated. Gradients and BatchNorm statistics are
means over the global batch, so the compiler inserts the cross-device
reductions and the result does not depend on the device count beyond
floating-point reassociation. One genotype comes out, by construction.

Multi-host runs call ``initialize`` before anything touches a device. It
reads flags or the environment:

- ``DNAS_COORDINATOR`` (host:port of process 0), ``DNAS_NUM_PROCESSES``,
  ``DNAS_PROCESS_ID``; or
- nothing, on TPU pods and SLURM/Open MPI clusters, where
  ``jax.distributed.initialize()`` finds them itself (set
  ``DNAS_DISTRIBUTED=auto``).

Example (two processes on one machine, CPU collectives):

  DNAS_COORDINATOR=127.0.0.1:9911 DNAS_NUM_PROCESSES=2 DNAS_PROCESS_ID=0 dnas search --workdir W &
  DNAS_COORDINATOR=127.0.0.1:9911 DNAS_NUM_PROCESSES=2 DNAS_PROCESS_ID=1 dnas search --workdir W
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import numpy as np

from dnas.errors import UserError

__all__ = [
    "initialize",
    "data_mesh",
    "replicated",
    "batch_sharded",
    "put_replicated",
    "is_main_process",
]

_INITIALIZED = False


def initialize(
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int | None = None,
) -> bool:
  """Starts ``jax.distributed`` when a multi-process run is asked for.

  Args:
    coordinator: ``host:port`` of process 0 (default ``$DNAS_COORDINATOR``).
    num_processes: total processes (default ``$DNAS_NUM_PROCESSES``).
    process_id: this process's index (default ``$DNAS_PROCESS_ID``).
    timeout_s: how long to wait for the coordinator and the other processes
      (default ``$DNAS_INIT_TIMEOUT`` or 120 s); then a clear error, not a hang.

  Returns:
    True if ``jax.distributed`` was initialised, False for a single process.

  Raises:
    UserError: an incomplete or inconsistent setting, or a coordinator that
      cannot be reached in time.
  """
  global _INITIALIZED
  if _INITIALIZED:
    return True
  env = os.environ
  coordinator = coordinator or env.get("DNAS_COORDINATOR")
  auto = env.get("DNAS_DISTRIBUTED", "") == "auto"
  if num_processes is None and env.get("DNAS_NUM_PROCESSES"):
    num_processes = _int_env("DNAS_NUM_PROCESSES")
  if process_id is None and env.get("DNAS_PROCESS_ID"):
    process_id = _int_env("DNAS_PROCESS_ID")
  if timeout_s is None:
    timeout_s = _int_env("DNAS_INIT_TIMEOUT") if env.get("DNAS_INIT_TIMEOUT") else 120
  if not coordinator and not auto:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise UserError(
          "DNAS_NUM_PROCESSES/DNAS_PROCESS_ID are set but DNAS_COORDINATOR is not;"
          " set DNAS_COORDINATOR=host:port of process 0"
      )
    return False
  import jax

  if coordinator:
    if num_processes is None or process_id is None:
      raise UserError(
          "a multi-process run needs DNAS_COORDINATOR, DNAS_NUM_PROCESSES and"
          " DNAS_PROCESS_ID together"
      )
    if not 0 <= process_id < num_processes:
      raise UserError(
          f"DNAS_PROCESS_ID={process_id} is outside 0..{num_processes - 1}"
          f" for DNAS_NUM_PROCESSES={num_processes}"
      )
    if process_id != 0:
      _wait_for_coordinator(coordinator, timeout_s)
    else:
      print(
          f"dnas: process 0 of {num_processes}: serving the coordinator at"
          f" {coordinator}; waiting up to {timeout_s} s for the others",
          file=sys.stderr,
      )
    # Cross-process collectives on CPU (tests, laptops); GPUs and TPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = dict(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )
  else:
    kwargs = dict(initialization_timeout=timeout_s)
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as error:  # jax raises XlaRuntimeError/RuntimeError variants
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserError(
        f"could not join the multi-process run at {coordinator or 'the cluster'}"
        f" (waited up to {timeout_s} s: {first[:160]}); check that process 0 is"
        " running and the address and process count match on every process"
    ) from None
  _INITIALIZED = True
  return True


def _wait_for_coordinator(coordinator: str, timeout_s: float) -> None:
  """Polls the coordinator's TCP port; a clear error instead of JAX's abort.

  ``jax.distributed.initialize`` terminates the process (no exception) when
  it cannot register with the coordinator in time, so we check first.
  """
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise UserError(f"coordinator {coordinator!r} is not host:port, e.g. 10.0.0.1:9911")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except OSError as error:
      if time.monotonic() >= deadline:
        raise UserError(
            f"could not join the multi-process run: coordinator {coordinator}"
            f" unreachable for {timeout_s} s ({error.strerror or error}); start"
            " process 0 first and check the address on every process"
        ) from None
      time.sleep(0.5)


def _int_env(name: str) -> int:
  value = os.environ[name]
  try:
    return int(value)
  except ValueError:
    raise UserError(f"{name}={value!r} is not an integer") from None


def data_mesh():
  """A one-axis mesh ``('data',)`` over every device of every process."""
  import jax
  from jax.sharding import Mesh

  return Mesh(np.array(jax.devices()), ("data",))


def replicated(mesh):
  from jax.sharding import NamedSharding, PartitionSpec

  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh):
  from jax.sharding import NamedSharding, PartitionSpec

  return NamedSharding(mesh, PartitionSpec("data"))


def check_batch(batch_size: int, mesh, what: str = "batch_size") -> int:
  """The per-device batch; a clear error when the global batch does not divide."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise UserError(
        f"{what}={batch_size} does not divide across {devices} devices; use a"
        f" multiple of {devices} (e.g. {max(devices, batch_size // devices * devices)})"
    )
  return batch_size // devices


def put_replicated(tree, mesh):
  """Places a pytree of host or device arrays on every device of the mesh.

  In a multi-process run each process passes the same values (its own copy);
  the result is one global array per leaf.
  """
  import jax

  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def is_main_process() -> bool:
  """True on process 0, the one that writes metrics and genotypes."""
  import jax

  return jax.process_index() == 0

"""Checkpoints of a whole run's state with orbax.

A checkpoint holds one pytree (weights, alphas, both optimiser states,
BatchNorm statistics, the step counter: whatever state the run keeps) plus a
small JSON record (epoch, position in the data order, a fingerprint of the
config). Saves are synchronous and atomic: orbax writes to a temporary
directory and renames it, so a run killed mid-save leaves the previous
checkpoint intact, and ``max_to_keep`` only deletes old checkpoints after a
newer one is complete.

  >>> ckpt = Checkpointer(workdir / 'checkpoints', max_to_keep=2)
  >>> ckpt.save(step, state, {'epoch': 3})
  >>> state, meta = ckpt.restore(ckpt.latest_step(), template=state)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from dnas.errors import UserError

__all__ = ["Checkpointer"]


def _flat(tree) -> tuple[dict[str, Any], Any]:
  leaves, treedef = jax.tree.flatten(tree)
  return {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}, treedef


class Checkpointer:
  """Saves and restores a run's state pytree under ``directory``.

  The tree is stored as its flat list of leaves; restoring needs a template
  of the same structure (a freshly initialised state), which also checks
  that the checkpoint belongs to the same model.

  Args:
    directory: where the numbered checkpoint directories live.
    max_to_keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            create=True,
        ),
        item_names=("state", "meta"),
    )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    """Writes ``state`` and ``meta`` as checkpoint ``step`` (blocking)."""
    flat, _ = _flat(state)
    flat = {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}
    ocp = self._ocp
    self._manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, step: int, template) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` into the structure of ``template``.

    Raises:
      UserError: the checkpoint does not match the template (a different
        model or config wrote it).
    """
    flat_template, treedef = _flat(template)
    abstract = {
        k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
        for k, v in flat_template.items()
    }
    ocp = self._ocp
    try:
      restored = self._manager.restore(
          int(step),
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
          ),
      )
    except Exception as error:  # orbax raises many types for a mismatch
      raise UserError(
          f"checkpoint {step} in {self.directory} does not match this run's model"
          f" ({type(error).__name__}); use a new --workdir"
      ) from None
    flat = restored["state"]
    for key, spec in abstract.items():
      if key not in flat or tuple(np.shape(flat[key])) != tuple(spec.shape):
        raise UserError(
            f"checkpoint {step} in {self.directory} does not match this run's"
            " model; use a new --workdir"
        )
    leaves = [flat[k] for k in sorted(flat_template)]
    return jax.tree.unflatten(treedef, leaves), dict(restored["meta"])

  def close(self) -> None:
    self._manager.close()

"""Checkpoint files written beside their target and renamed onto it, so a full disk or a kill
never leaves a truncated ``last.ckpt`` / ``best.ckpt`` in place of the previous good one.

Lightning's own ``TorchCheckpointIO`` writes to a temporary file in the system temp folder and
moves it onto the target; across filesystems that move is a copy, and a copy that runs out of
space leaves the target truncated (measured: a 430 kB ``last.ckpt`` of a 1.1 MB checkpoint on a
full tmpfs). A temporary file in the target's own folder makes the final step a rename.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..data.writers import atomic_write

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing on local filesystems."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to a temporary file beside ``path``, flush it to disk, rename it."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        target = Path(os.fspath(path))
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: str) -> None:
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide checkpoints from a team's readers
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())  # the rename must not land before the data

        atomic_write(target, write)

"""Load trained networks safely from checkpoints (no pickled code is ever executed)."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import build_model


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; ``str`` is one line naming the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


@dataclass
class TrainedModel:
    """A network in eval mode plus what is needed to feed it like during training."""

    net: nn.Module
    net_config: dict[str, Any]
    preprocess: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def pixel_size_nm(self) -> float | None:
        """Pixel size (nm) of the frames the model was trained on, when recorded."""
        value = self.preprocess.get("pixel_size_nm")
        return float(value) if value else None


_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL|GLOBAL)\s+([\w.]+)", re.I)


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line ``CheckpointError`` messages.

    A file carrying pickled objects other than plain data and tensors is refused because
    unpickling it could run code; damaged or foreign files are named as unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        if found:
            raise CheckpointError(path, "refused: loading it could run code (it holds the pickled "
                                        f"global {found[1]}, not plain data or tensors)") from None
        detail = re.search(r"Unsupported \w+ \S+|invalid load key[^\n]*", str(err))
        raise CheckpointError(path, "not a readable PyTorch checkpoint "
                                    f"({detail[0] if detail else 'corrupt pickle data'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({first})"[:300]) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the network of a temseg checkpoint with ``torch.load(weights_only=True)``.

    A checkpoint carrying arbitrary pickled objects (code) is refused with a ``CheckpointError``.
    """
    path = Path(path)
    ckpt = safe_torch_load(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(path, "not a Lightning checkpoint (no state_dict)")
    hp = ckpt.get("hyper_parameters") or {}
    net_config = dict(hp.get("net_config") or {})
    if "arch" not in net_config:
        raise CheckpointError(path, "checkpoint does not record its network (net_config); "
                                    "was it written by temseg-ablation?")
    net = build_model(net_config["arch"], **{k: v for k, v in net_config.items() if k != "arch"})
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(path, f"weights do not fit the recorded network: {err}"[:300]) from None
    net.eval()
    return TrainedModel(net, net_config, dict(hp.get("preprocess") or {}), str(path))

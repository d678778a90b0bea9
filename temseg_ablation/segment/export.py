"""``temseg-export MODEL --format onnx|torchscript --out PATH``: a trained network as a standalone graph.

The network is loaded exactly as ``temseg-segment --model`` loads it (:func:`.loading.load_model`,
weights-only, eval mode) and exported with dynamic batch, height and width. An exported graph
takes the *already preprocessed* tensor, so ``<out>.json`` beside it records what it expects:
the input layout, the training-matched preprocessing from the checkpoint, the input multiple,
what the output means, where the network came from and a SHA-256 of the exported file.

Every export is checked against the eager network (same fixed random input, at the trace size
and at another size, batch 2) before it is kept: a graph that differs by more than the stated
tolerance is deleted and the command fails, in the spirit of the project rule that any compiled
path must be checked against eager.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..models.io import CheckpointError, TrainedModel
from .infer import input_multiple, receptive_field_px
from .loading import ModelSpecError, load_model
from .pipeline import default_tracking_uri

__all__ = [
    "ATOL",
    "DEFAULT_EXPORT_TILE",
    "FORMATS",
    "ONNX_EXTRA_MESSAGE",
    "RTOL",
    "ExportError",
    "VerificationError",
    "export_model",
    "main",
    "sidecar_path",
    "verify_export",
    "verify_shapes",
]

FORMATS = ("onnx", "torchscript")
#: Trace size (px) when ``--tile`` is not given; the graphs are dynamic, so it only sets the
#: example input and the first verification size (rounded up to the input multiple).
DEFAULT_EXPORT_TILE = 256
#: An export is refused when max |exported - eager| > ATOL + RTOL * max |eager| (fp32 logits):
#: RTOL keeps the bound meaningful for trained networks whose logits run into the tens.
ATOL = 1e-4
RTOL = 1e-5
VERIFY_SEED = 0
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_EXTRA_MESSAGE = "--format onnx needs onnx and onnxscript: pip install 'temseg-ablation[export]'"
_LEGACY_OPSET = 17


class ExportError(RuntimeError):
    """An export that cannot be made or kept; ``str`` is one line."""


class VerificationError(ExportError):
    """The exported graph does not reproduce the eager network within the tolerance."""


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def sidecar_path(out: str | Path) -> Path:
    """Where the description of export ``out`` is written: ``<out>.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def verify_shapes(tile: int, multiple: int, channels: int = 1) -> list[tuple[int, int, int, int]]:
    """The two (N, C, H, W) verification inputs: the trace size and a non-square other size."""
    h = max(multiple, (tile // 2) // multiple * multiple)
    if h == tile:
        h = tile + multiple
    return [(2, channels, tile, tile), (2, channels, h, tile + multiple)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter so the command's stderr stays one line on failure.

    The tracer warns that each network's Python-level input-size check becomes a constant; the
    sidecar's ``input_multiple`` states that rule instead, and verifying at a second size shows
    the graph is not specialised to the trace size. The ONNX exporter logs missing torchvision
    ops and deprecations of its own internals.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_torchscript(net: nn.Module, example: torch.Tensor, path: Path,
                        opset: int | None) -> dict[str, Any]:
    # trace, not script: the UNet's forward uses zip(strict=) and computed ModuleList indices,
    # which TorchScript's compiler does not take; the trace records the shape-dependent
    # ConvTranspose output sizes as size ops, so it stays valid at other sizes.
    # check_trace=False: its re-run at the same size proves little; verify_export checks the
    # saved file at two sizes instead
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
    torch.jit.save(traced, str(path))
    return {"exporter": "torch.jit.trace"}


def _export_onnx_dynamo(net: nn.Module, example: torch.Tensor, path: Path,
                        opset: int | None) -> None:
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
            3: torch.export.Dim("width")}
    # external_data=False: one self-contained file, so the recorded checksum covers the weights
    torch.onnx.export(net, (example,), str(path), dynamo=True, external_data=False,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=(dims,), opset_version=opset, verbose=False)


def _export_onnx_legacy(net: nn.Module, example: torch.Tensor, path: Path,
                        opset: int | None) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=opset or _LEGACY_OPSET,
                      dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path,
                 opset: int | None) -> dict[str, Any]:
    import onnx

    info: dict[str, Any] = {"exporter": "torch.onnx.export(dynamo=True)"}
    try:
        _export_onnx_dynamo(net, example, path, opset)
    except Exception as err:  # the torch.export path refuses some graphs the tracer takes
        path.unlink(missing_ok=True)
        _export_onnx_legacy(net, example, path, opset)
        info = {"exporter": "torch.onnx.export(dynamo=False)",
                "dynamo_failure": _first_line(err)}
    graph = onnx.load(str(path))
    info["opset"] = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
                         None)
    return info


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript}


def _runner(path: Path, fmt: str):
    """A function running the exported file on a CPU tensor (the saved file, not the in-memory
    graph, so what is verified is what is shipped)."""
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return loaded(x).float()
        return run, f"torch.jit.load (torch {torch.__version__})"
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float()
    return run, f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def verify_export(net: nn.Module, path: str | Path, fmt: str,
                  shapes: Sequence[tuple[int, int, int, int]], *,
                  seed: int = VERIFY_SEED, name: str | None = None) -> dict[str, Any]:
    """Compare the exported file with ``net`` as given on fixed random inputs of ``shapes``.

    Returns the record for the sidecar; raises ``VerificationError`` when an output differs by
    more than ``ATOL + RTOL * max |eager|``, has another shape or is not finite. ``net`` is used
    in the mode it is in (``export_model`` passes it in eval mode). ``name`` labels the file in
    messages (default: its file name).
    """
    path = Path(path)
    label_file = name or path.name
    try:
        run, runtime = _runner(path, fmt)
    except Exception as err:
        raise VerificationError(f"{label_file}: cannot load the exported {fmt} file "
                                f"({_first_line(err)})") from None
    gen = torch.Generator().manual_seed(seed)
    worst, bound, checked = 0.0, 0.0, []
    for shape in shapes:
        # preprocessed frames are normalised to [0, 1], so test inputs are drawn there
        x = torch.rand(shape, generator=gen)
        label = "x".join(map(str, shape))
        try:
            with torch.inference_mode():
                ref = net(x).float()
        except Exception as err:
            raise ExportError(f"the eager network fails on a {label} input "
                              f"({_first_line(err)})") from None
        try:
            got = run(x)
        except Exception as err:
            raise VerificationError(f"{label_file}: the exported {fmt} graph fails on a {label} "
                                    f"input ({_first_line(err)})") from None
        if got.shape != ref.shape:
            raise VerificationError(f"{label_file}: the exported {fmt} graph outputs "
                                    f"{tuple(got.shape)} for {label}, eager {tuple(ref.shape)}")
        diff = float((got - ref).abs().max())
        tol = ATOL + RTOL * float(ref.abs().max())
        if not math.isfinite(diff) or diff > tol:
            raise VerificationError(f"{label_file}: the exported {fmt} graph differs from the "
                                    f"eager network by {diff:.3g} on a {label} input (tolerance "
                                    f"{tol:.3g}); export refused")
        worst, bound = max(worst, diff), max(bound, tol)
        checked.append({"shape": list(shape), "max_abs_diff": diff, "tolerance": tol})
    return {"verified": True, "runtime": runtime, "seed": seed, "atol": ATOL, "rtol": RTOL,
            "max_abs_diff": worst, "tolerance": bound, "inputs": checked}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(model: TrainedModel, fmt: str, out: Path, multiple: int, tile: int,
              export: dict[str, Any], verification: dict[str, Any]) -> dict[str, Any]:
    """The sidecar: everything a consumer of the bare graph needs to feed and read it."""
    net, cfg = model.net, model.net_config
    channels, classes = int(cfg.get("in_channels", 1)), int(cfg.get("num_classes", 2))
    pre = Preprocess.from_dict(model.preprocess)
    return {
        "format": fmt,
        "file": out.name,
        "sha256": _sha256(out),
        "size_bytes": out.stat().st_size,
        "source": model.source,
        "net_config": cfg,
        "input": {
            "name": INPUT_NAME, "layout": "NCHW", "shape": ["N", channels, "H", "W"],
            "dtype": "float32", "input_multiple": multiple,
            "note": f"H and W must be multiples of {multiple}: reflect-pad the bottom/right "
                    "edges (temseg_ablation.models.pad_to_multiple) and crop the output back",
        },
        "preprocess": {
            **pre.to_dict(),
            "network_pixel_size_nm": pre.network_pixel_size_nm,
            "recorded": model.preprocess,
            "steps": [
                "make particles dark (invert frames with bright particles)",
                f"percentile-normalise: the {pre.low_pct} and {pre.high_pct} percentiles map to "
                "0 and 1",
                "resize by frame pixel size / network_pixel_size_nm (when both are known)",
                f"Gaussian blur, sigma {pre.blur_sigma} px (0: none)",
            ],
            "reference": "temseg_ablation.data.preprocess.Preprocess.from_dict(preprocess).apply",
        },
        "output": {
            "name": OUTPUT_NAME, "shape": ["N", classes, "H", "W"], "dtype": "float32",
            "meaning": "class logits (channel 0 background, channel 1 particle), not "
                       "probabilities",
            "to_probability": "softmax over axis 1 and take channel 1, as temseg-segment does; "
                              "it then thresholds the probability (Otsu by default)",
        },
        "tiling": {
            "receptive_field_px": receptive_field_px(net),
            "note": "tiles whose kept parts lie at least this far from inner tile edges stitch "
                    "to the whole-frame result",
        },
        "export": {**export, "torch": torch.__version__, "eval_mode": not net.training,
                   "example_shape": [1, channels, tile, tile],
                   "dynamic_axes": ["batch", "height", "width"]},
        "verification": verification,
    }


def _check_tile(tile: int | None, multiple: int) -> int:
    if tile is None:
        return math.ceil(DEFAULT_EXPORT_TILE / multiple) * multiple
    if tile < multiple or tile % multiple:
        raise ExportError(f"--tile {tile} must be a positive multiple of {multiple} (the "
                          "network's input multiple)")
    return int(tile)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def export_model(source: str | Path | TrainedModel, out: str | Path, fmt: str, *,
                 tracking_uri: str | None = None, tile: int | None = None,
                 opset: int | None = None) -> dict[str, Any]:
    """Export the network ``source`` names to ``out`` as ``fmt``, verify it, write ``<out>.json``.

    ``source`` is what ``temseg-segment --model`` takes (or a loaded ``TrainedModel``). Returns
    the sidecar's content plus ``path`` and ``sidecar``. Raises ``ExportError`` (its subclass
    ``VerificationError`` when the graph does not match eager), ``ModelSpecError`` or
    ``CheckpointError``, each with a one-line message. A refused export is deleted and never
    reaches ``out`` (a file already there stays, with its own sidecar).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and not (_have("onnx") and _have("onnxscript")):
        raise ExportError(ONNX_EXTRA_MESSAGE)
    if opset is not None and fmt != "onnx":
        raise ExportError("--opset applies to --format onnx only")
    if str(source) in ("classical", "blobs"):
        raise ExportError(f"--model {source}: no network to export; give a checkpoint, "
                          "run id or models:/ URI")
    if isinstance(source, TrainedModel):
        model = source
    else:
        model = load_model(str(source), tracking_uri or default_tracking_uri(), map_location="cpu")
    # eval mode: BatchNorm must use its running statistics, as at inference
    net = model.net.to("cpu").eval()
    multiple = input_multiple(net)
    tile = _check_tile(tile, multiple)
    channels = int(model.net_config.get("in_channels", 1))
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    # written next to ``out`` and renamed only once verified: no unverified file ever sits there
    partial = out.with_name(f".{out.name}.partial")
    example = torch.rand((1, channels, tile, tile), generator=torch.Generator().manual_seed(1))
    try:
        with _quiet():
            try:
                export = _EXPORTERS[fmt](net, example, partial, opset)
            except Exception as err:
                raise ExportError(f"{fmt} export failed: {_first_line(err)}") from err
            shapes = verify_shapes(tile, multiple, channels)
            if fmt == "onnx" and not _have("onnxruntime"):
                verification: dict[str, Any] = {
                    "verified": False, "max_abs_diff": None,
                    "reason": "onnxruntime is not installed: pip install 'temseg-ablation[export]'"}
            else:
                verification = verify_export(net, partial, fmt, shapes, name=out.name)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    meta = _describe(model, fmt, out, multiple, tile, export, verification)
    _write_json(sidecar_path(out), meta)
    return {**meta, "path": str(out), "sidecar": str(sidecar_path(out))}


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="temseg-export",
        description="Export a trained network as ONNX or TorchScript with dynamic batch, height "
                    "and width, verified against the eager network. The graph takes the "
                    "preprocessed (N, 1, H, W) float32 tensor and returns class logits; OUT.json "
                    "beside it records the preprocessing, the input multiple and a checksum.")
    p.add_argument("model", help="checkpoint file, MLflow run id, models:/NAME/VERSION or "
                                 "models:/NAME@ALIAS")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                   help="onnx (needs the [export] extra) or torchscript")
    p.add_argument("--out", required=True, type=Path, help="file to write, e.g. model.onnx")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    p.add_argument("--tile", type=int, default=None,
                   help=f"trace and first verification size in px (default {DEFAULT_EXPORT_TILE}, "
                        "rounded up to the input multiple); the graph accepts other sizes")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    return p


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def main(argv: Sequence[str] | None = None) -> int:
    """Export; 0 on success, 2 with one ``error:`` line for a bad model, extra or mismatch."""
    args = build_parser().parse_args(argv)
    try:
        info = export_model(args.model, args.out, args.fmt, tracking_uri=args.tracking_uri,
                            tile=args.tile, opset=args.opset)
    except (ExportError, ModelSpecError, CheckpointError) as err:
        print(f"error: {_first_line(err)}", file=sys.stderr)
        return 2
    check = info["verification"]
    if check["verified"]:
        verdict = (f"verified: max |exported - eager| = {check['max_abs_diff']:.2g} "
                   f"(tolerance {check['tolerance']:.2g})")
    else:
        verdict = f"NOT verified ({check['reason']})"
    print(f"exported {info['path']} ({_size(info['size_bytes'])}, {args.fmt}); {verdict}; "
          f"description in {info['sidecar']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

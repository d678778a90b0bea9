"""``temseg-export``: ONNX / TorchScript graphs of a trained network match the eager network."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from temseg_ablation.segment import export, load_model
from temseg_ablation.segment.export import (
    ONNX_EXTRA_MESSAGE,
    VerificationError,
    export_model,
    main,
    sidecar_path,
    verify_export,
    verify_shapes,
)

TILE = 32  # small keeps the tests fast
MULTIPLE = 8  # the paper's three-level 512 x 512 UNet pools three times
OTHER = (3, 1, 48, 80)  # neither the trace size nor a verification size: dynamic axes at work


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained Norm UNet of the paper's 512 x 512 plan (small, so exports are quick) saved
    as training saves one, with BatchNorm running statistics that make eval and train differ."""
    from temseg_ablation.app.build import build_module

    from .conftest import TINY, compose_cfg

    torch.manual_seed(0)
    module = build_module(compose_cfg([*TINY, "model=norm", "depth=paper512"]))
    with torch.no_grad():
        for m in module.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def torchscript(checkpoint, tmp_path_factory) -> tuple[dict, Path]:
    """The checkpoint exported once as TorchScript: (returned info, file)."""
    out = tmp_path_factory.mktemp("ts") / "net.pt"
    return export_model(checkpoint, out, "torchscript", tile=TILE), out


def _eager(checkpoint: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return load_model(str(checkpoint)).net(x)


def _check_sidecar(info: dict, out: Path, fmt: str, checkpoint: Path) -> None:
    meta = json.loads(sidecar_path(out).read_text())
    assert sidecar_path(out) == out.with_name(out.name + ".json") and info["sidecar"] == str(
        sidecar_path(out))
    assert meta["format"] == fmt and meta["file"] == out.name and meta["source"] == str(checkpoint)
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["size_bytes"] == out.stat().st_size
    assert meta["input"]["shape"] == ["N", 1, "H", "W"] and meta["input"]["dtype"] == "float32"
    assert meta["input"]["input_multiple"] == MULTIPLE
    recorded = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["preprocess"]
    assert meta["preprocess"]["recorded"] == recorded
    for key in ("pixel_size_nm", "blur_sigma", "particles", "low_pct", "high_pct"):
        assert meta["preprocess"][key] == recorded[key]
    assert meta["output"]["shape"] == ["N", 2, "H", "W"]
    assert "logits" in meta["output"]["meaning"] and "softmax" in meta["output"]["to_probability"]
    assert meta["export"]["eval_mode"] is True
    assert meta["export"]["example_shape"] == [1, 1, TILE, TILE]
    check = meta["verification"]
    assert check["verified"] is True and 0 <= check["max_abs_diff"] <= check["tolerance"] < 2e-4
    assert [c["shape"] for c in check["inputs"]] == [list(s) for s in verify_shapes(TILE, MULTIPLE)]
    assert check["inputs"][1]["shape"][2:] != [TILE, TILE]
    assert meta["tiling"]["receptive_field_px"] > 0
    assert {k: v for k, v in info.items() if k not in ("path", "sidecar")} == meta


def test_torchscript_export_matches_eager_at_another_size(checkpoint, torchscript):
    info, out = torchscript
    _check_sidecar(info, out, "torchscript", checkpoint)
    x = torch.rand(OTHER, generator=torch.Generator().manual_seed(5))
    loaded = torch.jit.load(str(out))
    with torch.inference_mode():
        got = loaded(x)
    assert got.shape == (3, 2, 48, 80)
    assert float((got - _eager(checkpoint, x)).abs().max()) < 1e-4


def test_onnx_export_matches_eager_at_another_size(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "onnx" / "net.onnx"  # a missing folder is created
    info = export_model(checkpoint, out, "onnx", tile=TILE)
    _check_sidecar(info, out, "onnx", checkpoint)
    assert info["export"]["exporter"] == "torch.onnx.export(dynamo=True)"
    assert isinstance(info["export"]["opset"], int)
    assert sorted(p.name for p in out.parent.iterdir()) == ["net.onnx", "net.onnx.json"]  # no .data
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and isinstance(inp.shape[0], str) and inp.shape[1] == 1
    assert all(isinstance(d, str) for d in inp.shape[2:])  # dynamic height and width
    x = torch.rand(OTHER, generator=torch.Generator().manual_seed(5))
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    assert got.shape == (3, 2, 48, 80)
    assert float((got - _eager(checkpoint, x)).abs().max()) < 1e-4


def test_onnx_falls_back_to_the_legacy_exporter_and_still_verifies(checkpoint, tmp_path,
                                                                    monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    def refuse(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this\nsecond line")

    monkeypatch.setattr(export, "_export_onnx_dynamo", refuse)
    info = export_model(checkpoint, tmp_path / "net.onnx", "onnx", tile=TILE)
    assert info["export"]["exporter"] == "torch.onnx.export(dynamo=False)"
    assert info["export"]["dynamo_failure"] == "torch.export cannot trace this"
    assert info["verification"]["verified"] and info["verification"]["max_abs_diff"] < 1e-4


def test_verification_catches_a_different_network(checkpoint, torchscript):
    _, out = torchscript
    net = load_model(str(checkpoint)).net
    shapes = verify_shapes(TILE, MULTIPLE)
    assert verify_export(net, out, "torchscript", shapes)["max_abs_diff"] < 1e-4

    other = copy.deepcopy(net)
    with torch.no_grad():
        other.out_conv.bias.add_(1e-2)  # a small, real weight change
    with pytest.raises(VerificationError, match="differs from the eager network"):
        verify_export(other, out, "torchscript", shapes)
    # the export was made in eval mode: BatchNorm on batch statistics is another function
    with pytest.raises(VerificationError, match="differs from the eager network"):
        verify_export(copy.deepcopy(net).train(), out, "torchscript", shapes)
    with pytest.raises(VerificationError, match="cannot load the exported"):
        verify_export(net, out.with_name("missing.pt"), "torchscript", shapes)


def test_a_refused_export_leaves_no_file(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "ATOL", -1.0)  # no graph can pass: the refusal path runs
    out = tmp_path / "net.pt"
    assert main([str(checkpoint), "--format", "torchscript", "--out", str(out),
                 "--tile", str(TILE)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("error: net.pt: the exported torchscript graph differs from the eager "
                          "network by ") and err.endswith("; export refused\n")
    assert list(tmp_path.iterdir()) == []  # neither the graph, its sidecar nor a partial file


def test_cli_exports_and_reports_bad_sources_in_one_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    assert main([str(checkpoint), "--format", "torchscript", "--out", str(out),
                 "--tile", str(TILE)]) == 0
    printed = capsys.readouterr()
    assert str(out) in printed.out and "KiB" in printed.out
    assert "max |exported - eager| =" in printed.out and printed.err == ""
    assert out.is_file() and sidecar_path(out).is_file()

    store = f"sqlite:///{tmp_path}/none/mlflow.db"
    bad = [[str(tmp_path / "nope.ckpt")], ["not-a-model"], ["classical"],
           ["0" * 32, "--tracking-uri", store], [str(checkpoint), "--tile", "36"]]
    for args in bad:
        code = main([*args, "--format", "torchscript", "--out", str(tmp_path / "bad.pt")])
        err = capsys.readouterr().err
        assert code == 2, args
        assert len(err.splitlines()) == 1 and err.startswith("error: "), (args, err)
    assert not (tmp_path / "bad.pt").exists()


def test_onnx_without_its_extra_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "_have", lambda module: module != "onnxscript")
    out = tmp_path / "net.onnx"
    assert main([str(checkpoint), "--format", "onnx", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {ONNX_EXTRA_MESSAGE}\n"
    assert ONNX_EXTRA_MESSAGE == ("--format onnx needs onnx and onnxscript: "
                                  "pip install 'temseg-ablation[export]'")
    assert not out.exists()

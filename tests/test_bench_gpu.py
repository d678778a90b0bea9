"""``experiments/bench/gpu.py``: a tiny CPU run writes every section, and CUDA is never faked.

The tiny run (32 x 32 px, a few timed calls, ``torch.compile`` with the ``eager`` backend so that no
C++ compiler is needed) only shows that the script and its agreement checks work end to end; the
numbers mean nothing. The guard tests drive the agreement checks with deliberately wrong outputs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "bench" / "gpu.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_modes as gm  # noqa: E402

MODES = [m.name for m in gm.MODES]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("bench_gpu")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out",
                           str(out)], cwd=out, env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text(), proc.stdout


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_run_has_every_section_with_positive_numbers(tiny_run):
    res, md, stdout = tiny_run
    assert res["machine"]["torch"] == torch.__version__ and res["machine"]["device"]
    assert res["reduced_run"] is True and res["size"] == 32
    for variant in ("norm", "twoconv_norm"):
        model = res["models"][variant]
        assert model["net"]["norm"] == "batch" and model["net"]["head_channels"] == 8
        assert model["net"]["extra_conv"] is (variant == "twoconv_norm")
        assert [r["mode"] for r in model["inference"]] == MODES
        assert [r["mode"] for r in model["training"]] == MODES
        for r in model["inference"]:
            assert r["checks"], r  # the agreement check ran before any timing
            for c in r["checks"]:
                assert c["max_abs_prob"] >= 0 and c["tolerance"] > 0
            if r["status"] == "ok":
                assert all(_positive(b["fps"]["median"]) for b in r["batches"])
                assert [b["batch"] for b in r["batches"]][:2] == [1, 2]
                assert r["best"]["fps"]["min"] <= r["best"]["fps"]["median"] <= r["best"]["fps"]["max"]
            else:
                assert r["status"] in ("disagrees", "failed") and r["stop"]
        for r in model["training"]:
            c = r["check"]
            assert c["rel_grad"] >= 0 and c["max_abs_prob"] >= 0 and c["grad_tolerance"] > 0
            assert c["agrees"] == (c["rel_grad"] <= c["grad_tolerance"]
                                   and c["max_abs_prob"] <= c["prob_tolerance"])
            assert (r["status"] == "ok") == c["agrees"]
            if r["status"] == "ok":
                assert _positive(r["images_per_s"]["median"]) and r["batch"] == 8
        # eager against itself: exact agreement, always usable
        assert model["inference"][0]["status"] == "ok" and model["training"][0]["status"] == "ok"
        assert model["training"][0]["check"]["rel_grad"] == 0
        assert _positive(model["inference_best"]["best"]["fps"]["median"])
    d = res["data"]
    assert _positive(d["loader_images_per_s"]) and _positive(d["single_process_crops_per_s"])
    assert d["batch"] == 8 and d["augment"]["affine"] is True  # the paper's settings
    proj = res["projection"]
    assert len(proj["sweep"]["jobs"]) == 15 and proj["seeds_table1"] == 8
    assert len(proj["table1"]["jobs"]) == len(list((REPO / "conf" / "table1").glob("*.yaml")))
    for group in ("sweep", "table1"):
        assert _positive(proj[group]["total_h"]) and _positive(proj[group]["total_h_best_mode"])
        for j in proj[group]["jobs"]:
            assert j["epochs"] == 25 and j["train_crops"] == 1680 and j["val_frames"] == 720
            assert math.isclose(j["total_s"], j["epoch_s"] * 25 * j["runs"])
    assert {j["runs"] for j in proj["table1"]["jobs"]} == {8}
    assert len(res["targets"]) == 3
    assert all(t["verdict"].startswith("not assessed") for t in res["targets"])
    for heading in ("## Targets", "## norm", "## twoconv_norm", "## Data pipeline",
                    "## Projected wall time"):
        assert heading in md
    assert "not assessed" in stdout and "wrote" in stdout


def test_cuda_without_cuda_exits_2_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--out", str(tmp_path)],
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda" in lines[0].lower(), proc.stderr
    assert not (tmp_path / "gpu.json").exists()


def _tiny_net() -> nn.Module:
    from temseg_ablation.models import build_model

    torch.manual_seed(0)
    return build_model("unet", encoder_channels=(4, 8), decoder_channels=(8, 4), head_channels=4,
                       norm="batch")


def test_prob_check_rejects_wrong_outputs():
    ref = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert gm.prob_check(ref.clone(), gm.probs(ref), gm.FP32_PROB_TOL)["agrees"]
    shifted = ref + torch.tensor([0.0, 3.0]).view(1, 2, 1, 1)
    assert not gm.prob_check(shifted, gm.probs(ref), gm.FP32_PROB_TOL)["agrees"]
    assert not gm.prob_check(torch.full_like(ref, math.nan), gm.probs(ref), 1.0)["agrees"]


def test_disagreeing_compiled_inference_is_not_timed(monkeypatch):
    real = gm.inference_runner

    def wrong(net, mode, device, backend):
        run = real(net, gm.Mode("eager"), device, backend)
        return (lambda x: run(x).flip(1)) if mode.compile else run  # classes swapped

    monkeypatch.setattr(gm, "inference_runner", wrong)
    timing = {"warmup": 1, "repeats": 1, "min_repeat_s": 0.0}
    frame = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    net = _tiny_net().eval()
    bad = gm.sweep_inference(net, frame, gm.MODES[2], torch.device("cpu"), backend="eager",
                             max_batch=2, timing=timing)
    assert bad["status"] == "disagrees" and not bad["batches"] and "best" not in bad
    good = gm.sweep_inference(net, frame, gm.MODES[0], torch.device("cpu"), backend="eager",
                              max_batch=2, timing=timing)
    assert good["status"] == "ok" and good["best"]["fps"]["median"] > 0


def test_training_check_catches_wrong_gradients(monkeypatch):
    """A 'compiled' training path whose gradients are off is rejected and never timed."""
    real = gm.train_parts

    def scaled(net, mode, device, backend, lr):
        model, fb, step = real(net, gm.Mode("eager"), device, backend, lr)
        if not mode.compile:
            return model, fb, step

        def fb_wrong(x, y):
            out = fb(x, y)
            for p in model.parameters():
                p.grad.mul_(1.5)  # outputs right, gradients 50 % too large
            return out

        return model, fb_wrong, step

    monkeypatch.setattr(gm, "train_parts", scaled)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    y = (x[:, 0] > 0.5).long()
    timing = {"warmup": 1, "repeats": 1, "min_repeat_s": 0.0}
    args = dict(device=torch.device("cpu"), backend="eager", lr=1e-3, timing=timing)
    bad = gm.bench_training(_tiny_net(), x, y, gm.MODES[2], **args)
    assert bad["status"] == "disagrees" and "images_per_s" not in bad
    assert bad["check"]["max_abs_prob"] == 0 and bad["check"]["rel_grad"] == pytest.approx(0.5)
    good = gm.bench_training(_tiny_net(), x, y, gm.MODES[0], **args)
    assert good["status"] == "ok" and good["images_per_s"]["median"] > 0


def test_oom_ends_the_batch_sweep_cleanly(monkeypatch):
    real = gm.inference_runner

    def limited(net, mode, device, backend):
        run = real(net, mode, device, backend)

        def guarded(x):
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return run(x)

        return guarded

    monkeypatch.setattr(gm, "inference_runner", limited)
    monkeypatch.setattr(gm, "PLATEAU_GAIN", -1.0)  # timing noise must not end the sweep first
    res = gm.sweep_inference(_tiny_net().eval(), torch.rand(1, 1, 16, 16), gm.MODES[0],
                             torch.device("cpu"), backend="eager", max_batch=16,
                             timing={"warmup": 1, "repeats": 1, "min_repeat_s": 0.0})
    assert res["status"] == "ok" and res["stop"] == "out of memory at batch 4"
    assert [b["batch"] for b in res["batches"]] == [1, 2]

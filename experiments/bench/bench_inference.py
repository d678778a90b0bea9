"""Inference frames/s of the Norm UNet in eval mode, per execution option, each checked against eager.

Options: fp32 eager (``no_grad``, the baseline), channels-last, ``inference_mode``, autocast
(bf16 on CPU; fp16 and bf16 on CUDA), ``torch.compile`` (eval mode) and combinations; on CUDA
also a large batch of the best option. Every option's output on the first frame is compared with
the fp32 eager output: the largest absolute difference of the particle probability must stay
within 1e-3 for fp32 options (reduced-precision autocast: within 0.1, with at most 0.1 % of the
pixels changing class at 0.5) or the option is marked ``rejected`` and never chosen as the best,
however fast it is. (``torch.compile`` in train mode
has given outputs that differ by several units from eager on this stack, so no compiled path is
trusted without this check.)
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import Row, compose, quiet_logs, synchronize
from torch import nn

FP32_TOL = 1e-3
REDUCED_TOL = 1e-1
REDUCED_MAX_FLIPS = 1e-3


@dataclass(frozen=True)
class InferOption:
    """How to run the network: memory format, grad mode, autocast dtype, compile, batch size."""

    name: str
    channels_last: bool = False
    inference_mode: bool = False
    autocast: str | None = None  # "bfloat16" | "float16" | None (fp32)
    compile: bool = False
    batch: int = 1

    @property
    def tolerance(self) -> float:
        """Largest accepted |probability difference| against fp32 eager."""
        return FP32_TOL if self.autocast is None else REDUCED_TOL

    @property
    def max_flips(self) -> float:
        """Largest accepted fraction of pixels whose 0.5-thresholded class differs from eager."""
        return 1.0 if self.autocast is None else REDUCED_MAX_FLIPS

    def with_batch(self, batch: int) -> InferOption:
        """The same option at another batch size."""
        return InferOption(f"{self.name}, batch {batch}", self.channels_last, self.inference_mode,
                           self.autocast, self.compile, batch)


def options_for(device: torch.device, *, compile: bool = True, cuda_batch: int = 16) -> list[InferOption]:
    """The options worth timing on ``device`` (the first is the fp32 eager baseline)."""
    if device.type == "cuda":
        b = cuda_batch
        opts = [
            InferOption("fp32 eager", batch=b),
            InferOption("fp32 channels-last", channels_last=True, batch=b),
            InferOption("fp32 inference_mode", inference_mode=True, batch=b),
            InferOption("fp16 autocast, channels-last", True, True, "float16", batch=b),
            InferOption("bf16 autocast, channels-last", True, True, "bfloat16", batch=b),
        ]
        if compile:
            opts += [InferOption("compile, fp16 autocast, channels-last", True, True, "float16",
                                 True, batch=b),
                     InferOption("compile, fp32", False, True, None, True, batch=b)]
        return opts
    opts = [
        InferOption("fp32 eager"),
        InferOption("channels-last", channels_last=True),
        InferOption("inference_mode", inference_mode=True),
        InferOption("channels-last + inference_mode", channels_last=True, inference_mode=True),
        InferOption("bf16 autocast", inference_mode=True, autocast="bfloat16"),
    ]
    if compile:
        opts += [InferOption("torch.compile (eval)", inference_mode=True, compile=True),
                 InferOption("torch.compile (eval) + channels-last", True, True, None, True)]
    return opts


def eval_net(root: Path, variant: str = "norm", image: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, *, train_steps: int = 30, crop: int = 128,
             seed: int = 0) -> nn.Module:
    """The ``variant`` network, briefly trained on crops of ``image`` / ``mask``, in eval mode.

    An untrained network answers about 0.5 everywhere and its BatchNorm statistics are the
    identity, which makes agreement checks meaningless (every pixel sits on the decision edge)
    and lets a compiler special-case the norms; a few dozen Adam steps give confident outputs
    and real statistics. ``image`` is (1, 1, H, W) float, ``mask`` (H, W) class ids.
    """
    from temseg_ablation.app.build import build_net

    torch.manual_seed(seed)
    net = build_net(compose([f"model={variant}"], root))
    if image is not None and mask is not None and train_steps > 0:
        gen = torch.Generator().manual_seed(seed)
        h, w = image.shape[-2:]
        c = min(crop, h, w) // int(getattr(net, "input_multiple", 1)) * int(
            getattr(net, "input_multiple", 1))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for _ in range(train_steps):
            tops = torch.randint(0, h - c + 1, (4,), generator=gen).tolist()
            lefts = torch.randint(0, w - c + 1, (4,), generator=gen).tolist()
            x = torch.cat([image[..., t:t + c, s:s + c] for t, s in zip(tops, lefts, strict=True)])
            y = torch.stack([mask[t:t + c, s:s + c] for t, s in zip(tops, lefts, strict=True)])
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def particle_probability(logits: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the particle class, (B, H, W) float32."""
    return F.softmax(logits.float(), dim=1)[:, 1]


def compare(candidate: torch.Tensor, reference: torch.Tensor, tolerance: float,
            max_flips: float = 1.0) -> dict[str, Any]:
    """Agreement of two (B, 2, H, W) logit tensors: max |logit diff|, max |prob diff|, mask flips.

    ``accepted`` is True when the largest probability difference is within ``tolerance`` and at
    most a ``max_flips`` fraction of pixels changes class at 0.5.
    """
    if candidate.shape != reference.shape:
        raise ValueError(f"output shape {tuple(candidate.shape)} differs from the eager "
                         f"reference {tuple(reference.shape)}")
    c, r = candidate.detach().float().cpu(), reference.detach().float().cpu()
    dp = (particle_probability(c) - particle_probability(r)).abs()
    flips = ((particle_probability(c) > 0.5) != (particle_probability(r) > 0.5)).float().mean()
    finite = bool(torch.isfinite(c).all())
    max_dp = float(dp.max()) if finite else float("inf")
    return {"max_abs_logit": float((c - r).abs().max()) if finite else float("inf"),
            "max_abs_prob": max_dp, "mask_flip_fraction": float(flips),
            "accepted": finite and max_dp <= tolerance and float(flips) <= max_flips}


def _runner(net: nn.Module, opt: InferOption, device: torch.device
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable frames -> logits that applies ``opt`` (pads to the net's input multiple)."""
    from temseg_ablation.models import pad_to_multiple

    model = copy.deepcopy(net).to(device).eval()
    if opt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if opt.compile:
        model = torch.compile(model, dynamic=False)
    multiple = int(getattr(net, "input_multiple", 1))
    grad_ctx = torch.inference_mode if opt.inference_mode else torch.no_grad

    def run(x: torch.Tensor) -> torch.Tensor:
        with grad_ctx():
            xp, (h, w) = pad_to_multiple(x, multiple)
            if opt.channels_last:
                xp = xp.contiguous(memory_format=torch.channels_last)
            amp = (torch.autocast(device.type, dtype=getattr(torch, opt.autocast))
                   if opt.autocast else contextlib.nullcontext())
            with amp:
                out = model(xp)
            return out[..., :h, :w]

    return run


def _call_seconds(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    run(x)
    synchronize(device)
    return time.perf_counter() - t0


def prepare_option(net: nn.Module, frame: torch.Tensor, opt: InferOption, device: torch.device,
                   warmup: int = 1) -> dict[str, Any]:
    """Build ``opt``'s runner on ``frame`` (1, 1, H, W) repeated to the batch and warm it up.

    The first call (which compiles, where compiling) is timed on its own; its output on the
    first frame is kept for the comparison with eager.
    """
    x = frame.to(device).expand(opt.batch, *frame.shape[1:]).contiguous()
    run = _runner(net, opt, device)
    synchronize(device)
    t0 = time.perf_counter()
    first_out = run(x)
    synchronize(device)
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        run(x)
    return {"option": opt, "run": run, "x": x, "first_call_s": first_s, "times": [],
            "output": first_out[:1].float().cpu()}


def _failed(opt: InferOption, err: Exception) -> dict[str, Any]:
    return {"option": opt, "status": "failed",
            "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}


def bench_shape(net: nn.Module, frame: torch.Tensor, options: Sequence[InferOption],
                device: torch.device, *, warmup: int, iters: int,
                skip: Callable[[InferOption], str | None] = lambda o: None,
                log=print) -> list[dict[str, Any]]:
    """Time every option on one frame size; the first option is the reference for the others.

    All options are prepared (and compiled) first, then timed round-robin, one call each per
    round, so that a change in machine load during the run hits every option alike.
    """
    torch._dynamo.reset()
    results: list[dict[str, Any]] = []
    for opt in options:
        reason = skip(opt)
        if reason:
            results.append({"option": opt, "status": "skipped", "reason": reason})
            log(f"  {opt.name}: skipped ({reason})")
            continue
        try:
            results.append(prepare_option(net, frame, opt, device, warmup))
        except Exception as err:  # noqa: BLE001 - one broken option must not stop the others
            results.append(_failed(opt, err))
            log(f"  {opt.name}: failed ({results[-1]['reason']})")
    for _ in range(iters):
        for i, r in enumerate(results):
            if "run" not in r:
                continue
            try:
                r["times"].append(_call_seconds(r["run"], r["x"], device))
            except Exception as err:  # noqa: BLE001
                results[i] = _failed(r["option"], err)
    reference = None
    for r in results:
        if "run" not in r:
            continue
        opt = r["option"]
        del r["run"], r["x"]
        r["fps"] = opt.batch * len(r["times"]) / sum(r["times"])
        if reference is None:
            reference = r["output"]
        r.update(compare(r.pop("output"), reference, opt.tolerance, opt.max_flips))
        r["status"] = "ok" if r["accepted"] else "rejected"
        log(f"  {opt.name}: {r['fps']:.3g} frames/s, max|dp| {r['max_abs_prob']:.1e} "
            f"({r['status']}, first call {r['first_call_s']:.1f} s)")
    return results


def choose_best(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest option whose output agreed with eager (rejected / failed ones never win)."""
    ok = [r for r in results if r.get("status") == "ok"]
    return max(ok, key=lambda r: r["fps"]) if ok else None


def rows_from(results: Sequence[dict[str, Any]], shape: tuple[int, int], device: torch.device,
              variant: str = "Norm", target_fps: float | None = None) -> list[Row]:
    """Table rows for one frame size: each option against fp32 eager, the best one marked."""
    h, w = shape
    base = next((r for r in results if r.get("status") in ("ok", "rejected")), None)
    best = choose_best(results)
    rows = []
    for r in results:
        opt: InferOption = r["option"]
        item = f"{variant} {h}x{w} {device.type}: {opt.name}"
        if r["status"] in ("skipped", "failed"):
            rows.append(Row(group="inference", item=item, value=None, unit="frames/s",
                            verdict=r["status"], note=r["reason"]))
            continue
        verdict = "rejected" if r["status"] == "rejected" else ("best" if r is best else "ok")
        target = ""
        if r is best and target_fps is not None:
            target = f">= {target_fps:g} frames/s"
            verdict += " (target met)" if r["fps"] >= target_fps else " (target missed)"
        rows.append(Row(
            group="inference", item=item, value=r["fps"], unit="frames/s",
            base_name="fp32 eager", base_value=base["fps"] if base else None,
            derived=f"max|dp| {r['max_abs_prob']:.1e}, max|dlogit| {r['max_abs_logit']:.1e}",
            target=target, verdict=verdict,
            note=(("input already on the GPU; " if device.type == "cuda" else "")
                  + f"batch {opt.batch}, {len(r['times'])} timed calls, first call "
                  f"{r['first_call_s']:.1f} s; mask flips {r['mask_flip_fraction']:.1e}; accepted if "
                  f"max|dp| <= {opt.tolerance:g}"
                  + (f" and flips <= {opt.max_flips:g}" if opt.max_flips < 1 else "")),
            raw={"times": r["times"], "first_call_s": r["first_call_s"],
                 "max_abs_prob": r["max_abs_prob"], "max_abs_logit": r["max_abs_logit"]},
        ))
    return rows


def synthetic_frame(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised synthetic bright-field frame (1, 1, H, W) float32 and its mask (H, W) int64."""
    from temseg_ablation.data.synthetic import SyntheticConfig, generate_frame
    from temseg_ablation.data.transforms import normalise

    frame = generate_frame(SyntheticConfig(height=height, width=width), seed)
    image = torch.from_numpy(normalise(np.asarray(frame.image)))[None, None]
    return image, torch.from_numpy(np.asarray(frame.mask).astype(np.int64))


def run(root: Path, device: torch.device, shapes: Sequence[tuple[int, int]], *,
        warmup: int = 1, iters: int = 3, compile: bool = True, cuda_batch: int = 16,
        cuda_large_batch: int = 128, train_steps: int = 30, log=print) -> list[Row]:
    """All inference rows: every option at every shape, the best per shape chosen."""
    quiet_logs()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        # calls take milliseconds there: more of them, after the autotuning first calls
        warmup, iters = max(warmup, 3), max(iters, 20)
    big = max(s[0] for s in shapes), max(s[1] for s in shapes)
    frame, mask = synthetic_frame(*big)
    t0 = time.perf_counter()
    net = eval_net(root, "norm", frame, mask, train_steps=train_steps)
    log(f"  network trained {train_steps} steps for confident outputs ({time.perf_counter() - t0:.0f} s)")
    options = options_for(device, compile=compile, cuda_batch=cuda_batch)
    rows: list[Row] = []
    slow_reduced: dict[str, float] = {}
    for h, w in sorted(shapes):
        log(f" inference {h}x{w} on {device.type}")
        x = frame[..., :h, :w]

        def skip(opt: InferOption) -> str | None:
            # On a CPU without fast bf16 kernels a full frame in bf16 costs minutes; once it has
            # been measured slower than fp32 at a smaller size, larger sizes are not timed.
            if device.type == "cpu" and opt.autocast and opt.autocast in slow_reduced:
                return f"{slow_reduced[opt.autocast]:.1f}x slower than fp32 at a smaller size"
            return None

        results = bench_shape(net, x, options, device, warmup=warmup, iters=iters, skip=skip,
                              log=log)
        base = results[0].get("fps")
        for r in results:
            o = r["option"]
            if o.autocast and r.get("fps") and base and r["fps"] < base / 3:
                slow_reduced[o.autocast] = base / r["fps"]
        if device.type == "cuda":
            # a large batch of the best option; scaled down for frames larger than 1024 x 1024
            best = choose_best(results)
            large = max(1, round(cuda_large_batch * 1024 * 1024 / (h * w)))
            if best is not None and large > best["option"].batch:
                results += bench_shape(net, x, [options[0], best["option"].with_batch(large)],
                                       device, warmup=warmup, iters=iters, log=log)[1:]
        target = 1000.0 if device.type == "cuda" and (h, w) == (1024, 1024) else None
        rows += rows_from(results, (h, w), device, target_fps=target)
    return rows

"""Execution modes of the GPU benchmark: build each, check it against eager fp32, time it.

A mode (channels-last, ``torch.compile``, bf16 autocast, TF32) is timed only after its output on
the same input agrees with strict eager fp32 (TF32 off) within the mode's stated tolerance; a
mode that disagrees is reported as such and never used. Training modes are also checked on one
step's gradients, because ``torch.compile`` in train mode has given wrong outputs on this stack for
the UNet's conv -> leaky ReLU -> BatchNorm head (see tests/test_compile_guard.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: max |softmax probability difference| vs eager fp32: fp32 modes, TF32 (10-bit mantissa) and
#: bf16 autocast (8-bit mantissa)
FP32_PROB_TOL, TF32_PROB_TOL, BF16_PROB_TOL = 1e-4, 1e-2, 5e-2
#: ||g - g_eager|| / ||g_eager|| over all parameters' gradients of one training step
FP32_GRAD_TOL, TF32_GRAD_TOL, BF16_GRAD_TOL = 1e-3, 1e-2, 5e-2
#: a larger batch must raise throughput by more than this fraction to be tried further
PLATEAU_GAIN = 0.05


@dataclass(frozen=True)
class Mode:
    """One way of executing the network."""

    name: str
    channels_last: bool = False
    compile: bool = False
    bf16: bool = False
    tf32: bool = False

    @property
    def prob_tol(self) -> float:
        """Accepted max |softmax prob diff| against eager fp32."""
        return BF16_PROB_TOL if self.bf16 else TF32_PROB_TOL if self.tf32 else FP32_PROB_TOL

    @property
    def grad_tol(self) -> float:
        """Accepted relative gradient difference against eager fp32."""
        return BF16_GRAD_TOL if self.bf16 else TF32_GRAD_TOL if self.tf32 else FP32_GRAD_TOL


MODES = (Mode("eager fp32"), Mode("channels-last", channels_last=True),
         Mode("torch.compile", compile=True), Mode("bf16 autocast", bf16=True),
         Mode("TF32", tf32=True))


@contextlib.contextmanager
def fp32_precision(tf32: bool) -> Iterator[None]:
    """Allow TF32 in cuDNN convolutions and matmuls only inside this block (strict fp32 outside).

    PyTorch allows TF32 in cuDNN convolutions by default, so the eager baseline turns it off
    explicitly to be a true fp32 reference. The legacy flags are used on purpose: with the newer
    per-backend ``fp32_precision`` settings, code that still reads ``allow_tf32`` (the compiler
    does) raises about mixed APIs on torch 2.13.
    """
    cudnn, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    old = (cudnn.allow_tf32, mm.allow_tf32)
    cudnn.allow_tf32 = mm.allow_tf32 = tf32
    try:
        yield
    finally:
        cudnn.allow_tf32, mm.allow_tf32 = old


def _contexts(mode: Mode, device: torch.device) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(fp32_precision(mode.tf32))
    if mode.bf16:
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    return stack


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timing covers them (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(err: BaseException) -> bool:
    """True for an out-of-memory error (CUDA or host), however the backend wraps it."""
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(err)


def failure(err: BaseException) -> str:
    """First line of an exception, short."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"


def timed(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int,
          min_repeat_s: float) -> dict[str, float]:
    """Calls/s of ``fn``: ``warmup`` untimed calls, then ``repeats`` blocks of >= ``min_repeat_s``.

    Returns the median and the spread (min, max) of the per-block rates.
    """
    for _ in range(max(warmup, 1)):
        fn()
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    n = max(1, math.ceil(min_repeat_s / max(time.perf_counter() - t0, 1e-9)))
    rates = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        synchronize(device)
        rates.append(n / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "calls_per_repeat": n, "repeats": repeats}


def probs(out: torch.Tensor) -> torch.Tensor:
    """Softmax class probabilities (B, C, H, W) float32 on the CPU."""
    return F.softmax(out.detach().float().cpu(), dim=1)


def prob_check(out: torch.Tensor, ref_probs: torch.Tensor, tol: float) -> dict[str, Any]:
    """Max |softmax prob diff| of ``out`` against the reference probabilities; pass/fail at ``tol``."""
    p = probs(out)
    if p.shape != ref_probs.shape:
        return {"max_abs_prob": math.inf, "tolerance": tol, "agrees": False,
                "reason": f"shape {tuple(p.shape)} != {tuple(ref_probs.shape)}"}
    diff = float((p - ref_probs).abs().max()) if bool(torch.isfinite(p).all()) else math.inf
    return {"max_abs_prob": diff, "tolerance": tol, "agrees": diff <= tol}


def peak_memory(device: torch.device) -> int | None:
    """Peak allocated bytes since the last reset (CUDA only)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    """Free cached blocks and restart the peak-memory counter (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def inference_runner(net: nn.Module, mode: Mode, device: torch.device, backend: str
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable frames (B, 1, H, W) -> outputs that executes ``net`` (eval mode) in ``mode``."""
    model = copy.deepcopy(net).to(device).eval()
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model, backend=backend) if mode.compile else model

    def run(x: torch.Tensor) -> torch.Tensor:
        if mode.compile:
            # one compile for the whole batch sweep, not one per batch size (minutes on a GPU)
            torch._dynamo.mark_dynamic(x, 0)
        with torch.no_grad(), _contexts(mode, device):
            if mode.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return fwd(x)

    return run


def batch_sizes(max_batch: int) -> Iterator[int]:
    """1, 2, 4, ... up to ``max_batch``."""
    b = 1
    while b <= max_batch:
        yield b
        b *= 2


def sweep_inference(net: nn.Module, frame: torch.Tensor, mode: Mode, device: torch.device, *,
                    backend: str, max_batch: int, timing: dict[str, Any]) -> dict[str, Any]:
    """Frames/s of ``mode`` over doubling batch sizes until the gain is <= 5 %, OOM or the cap.

    ``frame`` is (1, 1, H, W); every batch repeats it, and the first output of every batch is
    checked against eager fp32 on the same frame (a disagreement ends the mode: not used).
    """
    frame = frame.to(device)
    ref = probs(inference_runner(net, Mode("reference"), device, backend)(frame))
    res: dict[str, Any] = {"mode": mode.name, "batches": [], "checks": [], "status": "ok"}
    try:
        run = inference_runner(net, mode, device, backend)
        best = 0.0
        for b in batch_sizes(max_batch):
            x = frame.expand(b, *frame.shape[1:]).contiguous()
            reset_memory(device)
            try:
                check = prob_check(run(x)[:1], ref, mode.prob_tol)
                res["checks"].append({"batch": b, **check})
                if not check["agrees"]:
                    res.update(status="disagrees", stop=f"disagrees with eager fp32 at batch {b}")
                    break
                t = timed(lambda x=x: run(x), device, **timing)
            except Exception as err:  # noqa: BLE001 - OOM ends the sweep, anything else the mode
                if not is_oom(err):
                    raise
                reset_memory(device)
                res["stop"] = f"out of memory at batch {b}"
                break
            fps = {k: v * b for k, v in t.items() if k in ("median", "min", "max")}
            res["batches"].append({"batch": b, "fps": fps, "peak_mem_bytes": peak_memory(device),
                                   "calls_per_repeat": t["calls_per_repeat"]})
            if best and fps["median"] <= best * (1 + PLATEAU_GAIN):
                res["stop"] = f"batch {b} gained <= {PLATEAU_GAIN:.0%} over batch {b // 2}"
                break
            best = max(best, fps["median"])
        else:
            res["stop"] = f"batch cap {max_batch} reached"
    except Exception as err:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
        res.update(status="failed", stop=failure(err))
    if res["status"] == "ok" and res["batches"]:
        top = max(res["batches"], key=lambda r: r["fps"]["median"])
        res["best"] = {"batch": top["batch"], "fps": top["fps"], "peak_mem_bytes": top["peak_mem_bytes"]}
    elif res["status"] == "ok":
        res["status"] = "failed"
    return res


def train_parts(net: nn.Module, mode: Mode, device: torch.device, backend: str, lr: float):
    """(model, forward_backward, step) of a training copy of ``net`` executed in ``mode``."""
    model = copy.deepcopy(net).to(device).train()
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # the job's optimiser (training/module.py)
    fwd = torch.compile(model, backend=backend) if mode.compile else model

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if mode.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _contexts(mode, device):
            out = fwd(x)
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        return out

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        forward_backward(x, y)
        opt.step()

    return model, forward_backward, step


def grad_difference(model: nn.Module, ref: nn.Module) -> tuple[float, float]:
    """Gradient differences of ``model`` from ``ref`` after one backward pass.

    Returns ``(relative, worst_tensor)``: ||g - g_ref|| / ||g_ref|| over all parameters together
    (the decisive figure: tensors whose true gradient nearly cancels would make a per-tensor
    ratio meaningless under reduced precision) and the largest per-tensor
    max |g - g_ref| / max |g_ref| (recorded for inspection). Inf when a gradient is missing.
    """
    diff2 = ref2 = worst = 0.0
    for p, r in zip(model.parameters(), ref.parameters(), strict=True):
        if p.grad is None or r.grad is None or not bool(torch.isfinite(p.grad).all()):
            return math.inf, math.inf
        d = p.grad.float() - r.grad.float()
        diff2 += float((d * d).sum())
        ref2 += float((r.grad.float() ** 2).sum())
        worst = max(worst, float(d.abs().max()) / (float(r.grad.abs().max()) or 1.0))
    return math.sqrt(diff2 / ref2) if ref2 > 0 else math.inf, worst


def train_check(net: nn.Module, model: nn.Module, forward_backward, x: torch.Tensor,
                y: torch.Tensor, mode: Mode, device: torch.device) -> dict[str, Any]:
    """Train-mode outputs and one step's gradients of ``model`` (a ``mode`` copy of ``net``)
    against eager fp32 from the same weights on the same batch.

    Train-mode BatchNorm uses batch statistics, so eager repeats agree up to kernel choice.
    """
    ref, ref_fb, _ = train_parts(net, Mode("reference"), device, "eager", lr=0.0)
    ref_p = probs(ref_fb(x, y))
    out = prob_check(forward_backward(x, y), ref_p, mode.prob_tol)
    g, worst = grad_difference(model, ref)
    del ref
    model.zero_grad(set_to_none=True)
    return {"max_abs_prob": out["max_abs_prob"], "prob_tolerance": mode.prob_tol,
            "rel_grad": g, "grad_tolerance": mode.grad_tol, "worst_tensor_rel_grad": worst,
            "agrees": bool(out["agrees"] and g <= mode.grad_tol)}


def bench_training(net: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: Mode,
                   device: torch.device, *, backend: str, lr: float,
                   timing: dict[str, Any]) -> dict[str, Any]:
    """Training images/s of ``mode`` on batch ``x`` (B, 1, H, W), ``y`` (B, H, W), if it agrees."""
    x, y = x.to(device), y.to(device)
    res: dict[str, Any] = {"mode": mode.name, "batch": int(x.shape[0])}
    try:
        reset_memory(device)
        model, fb, step = train_parts(net, mode, device, backend, lr)
        res["check"] = train_check(net, model, fb, x, y, mode, device)
        if not res["check"]["agrees"]:
            res["status"] = "disagrees"
            return res
        reset_memory(device)
        t = timed(lambda: step(x, y), device, **timing)
        res["images_per_s"] = {k: t[k] * x.shape[0] for k in ("median", "min", "max")}
        res.update(status="ok", peak_mem_bytes=peak_memory(device),
                   steps_per_repeat=t["calls_per_repeat"])
    except Exception as err:  # noqa: BLE001
        reset_memory(device)
        res.update(status="out of memory" if is_oom(err) else "failed", reason=failure(err))
    return res


def fit_briefly(net: nn.Module, image: torch.Tensor, mask: torch.Tensor, device: torch.device, *,
                steps: int, crop: int, seed: int = 0) -> nn.Module:
    """``net`` after a few Adam steps on random crops of ``image`` (1, 1, H, W) / ``mask`` (H, W).

    An untrained net answers about 0.5 everywhere with identity BatchNorm statistics, which
    makes agreement checks meaningless; a few steps give confident outputs and real statistics.
    """
    gen = torch.Generator().manual_seed(seed)
    net = net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    h, w = image.shape[-2:]
    for _ in range(steps):
        tops = torch.randint(0, h - crop + 1, (4,), generator=gen).tolist()
        lefts = torch.randint(0, w - crop + 1, (4,), generator=gen).tolist()
        xs = torch.cat([image[..., t:t + crop, s:s + crop] for t, s in zip(tops, lefts, strict=True)])
        ys = torch.stack([mask[t:t + crop, s:s + crop] for t, s in zip(tops, lefts, strict=True)])
        with fp32_precision(False):
            loss = F.cross_entropy(net(xs.to(device)), ys.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.cpu().eval()

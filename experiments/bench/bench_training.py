"""Training-step throughput: the full framework vs a bare PyTorch loop vs the paper's style of loop.

All three train copies of the same initial network on the same crops, batch size and optimiser:

* framework: the real ``SegmentationModule`` + ``TEMDataModule`` (crops, augmentation) + the
  job's MLflow logger in a real ``pl.Trainer`` with validation switched off, timed by a callback
  (so data loading, logging and hooks are inside each step's interval);
* bare loop: forward, cross-entropy, backward and Adam on batches already drawn from that data
  module (so it is the compute floor);
* paper style: float64 NumPy crops turned into tensors per batch by stacking ``torch.Tensor``
  copies, the network inside ``nn.DataParallel``, the loss read back every step and metrics
  computed after the loop.

Warm-up steps are run and discarded in every loop. The bare and paper-style loops run one step
right after each framework step (from the timing callback), so changes in machine load hit all
loops alike; the headline ratio uses total times, which keeps costs paid every few steps (logging)
in the framework's figure.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_common import Row, compose, job_logger, quiet_logs, rate_from_times, synchronize
from torch import nn

VARIANT_LABEL = {"norm": "Norm", "twoconv_norm": "TwoConv_Norm"}


@dataclass(frozen=True)
class TrainSpec:
    """One throughput measurement: variant, square crop size, batch size, warm-up and timed steps."""

    variant: str
    crop: int
    batch: int = 4
    warmup: int = 2
    steps: int = 8
    # extra config overrides of this run. Note: with data.num_workers > 0 the worker also
    # prefetches while the side loops run, which flatters the framework's figure.
    overrides: tuple[str, ...] = ()


class Interleaved(pl.Callback):
    """Times each framework step and runs one step of every side loop right after it.

    A framework step is the wall time from the end of the previous side steps to the end of this
    optimiser step, so data loading, logging and every hook fall inside it, while the side loops'
    own time does not. Pairing the loops step by step makes a changing machine load hit all of
    them alike.
    """

    def __init__(self, device: torch.device, side_loops: Sequence[Any] = ()) -> None:
        self.device = device
        self.side_loops = list(side_loops)
        self.framework: list[float] = []
        self.mark: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if self.mark is None:  # first step: nothing ran before it yet
            synchronize(self.device)
            self.mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        synchronize(self.device)
        now = time.perf_counter()
        self.framework.append(now - self.mark)
        for loop in self.side_loops:
            loop.step()
        synchronize(self.device)
        self.mark = time.perf_counter()


def bench_config(variant: str, crop: int, batch: int, samples: int, root: Path,
                 frame_size: int, extra: Sequence[str] = ()) -> Any:
    """Quick-profile config for ``variant`` with frames big enough for ``crop`` and no held-out set."""
    frame = max(frame_size, crop)
    return compose([
        f"model={variant}", f"data.frame_height={frame}", f"data.frame_width={frame}",
        f"data.crop_size={crop}", f"data.batch_size={batch}", f"data.samples_per_epoch={samples}",
        "data.n_experiments=3", "data.frames_per_experiment=3", "data.heldout=false",
        "trainer.enable_progress_bar=false", *extra,
    ], root)


def draw_batches(dm, n: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` training batches of ``dm`` exactly as its loader yields them."""
    out = []
    for batch in dm.train_dataloader():
        out.append({"image": batch["image"], "mask": batch["mask"]})
        if len(out) == n:
            break
    return out


class BareLoop:
    """Plain PyTorch training on pre-drawn batches: forward, cross-entropy, backward, Adam."""

    def __init__(self, net: nn.Module, batches: Sequence[dict], lr: float,
                 device: torch.device) -> None:
        self.net = net.to(device).train()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.batches = list(batches)
        self.device = device
        self.times: list[float] = []

    def step(self) -> None:
        """One timed training step on the next batch (cycling)."""
        b = self.batches[len(self.times) % len(self.batches)]
        synchronize(self.device)
        t0 = time.perf_counter()
        x = b["image"].to(self.device, non_blocking=True)
        y = b["mask"].to(self.device, non_blocking=True)
        loss = F.cross_entropy(self.net(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        synchronize(self.device)
        self.times.append(time.perf_counter() - t0)


class PaperStyleLoop:
    """Training in the manner of the paper's scripts, written here from a description of them.

    Crops are kept as float64 (H, W) NumPy arrays and turned into a batch each step by stacking
    ``torch.Tensor`` copies; the network sits inside ``nn.DataParallel``; the loss is read back
    every step; metrics are computed in a separate pass after the loop (:meth:`metrics_pass`).
    """

    def __init__(self, net: nn.Module, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 batch: int, lr: float, device: torch.device) -> None:
        # a no-op wrapper without several GPUs, kept because the paper's scripts used it
        self.model = nn.DataParallel(net.to(device))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.criterion = nn.CrossEntropyLoss()
        self.images, self.masks = list(images), list(masks)
        self.batch, self.device = batch, device
        self.losses: list[float] = []
        self.times: list[float] = []

    def step(self) -> None:
        """One timed training step, conversion from NumPy included."""
        self.model.train()
        n, k0 = len(self.images), len(self.times) * self.batch
        pick = [(k0 + k) % n for k in range(self.batch)]
        synchronize(self.device)
        t0 = time.perf_counter()
        x = torch.stack([torch.Tensor(self.images[i][None]) for i in pick]).to(self.device)
        y = torch.stack([torch.Tensor(self.masks[i]) for i in pick]).long().to(self.device)
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        self.times.append(time.perf_counter() - t0)

    def metrics_pass(self, n_images: int) -> tuple[float, float]:
        """Predict ``n_images`` training crops again and score them in NumPy; (seconds, pixel F1)."""
        t0 = time.perf_counter()
        self.model.eval()
        tp = fp = fn = 0
        with torch.no_grad():
            for img, msk in list(zip(self.images, self.masks, strict=True))[:n_images]:
                prob = torch.softmax(self.model(torch.Tensor(img[None, None]).to(self.device)), 1)
                pred = prob[0, 1].cpu().numpy() > 0.5
                truth = msk > 0.5
                tp += int(np.sum(pred & truth))
                fp += int(np.sum(pred & ~truth))
                fn += int(np.sum(~pred & truth))
        self.model.train()
        return time.perf_counter() - t0, 2 * tp / max(2 * tp + fp + fn, 1)


def framework_run(cfg, net: nn.Module, warmup: int, steps: int, device: torch.device,
                  side_loops: Sequence[Any] = ()) -> dict[str, Any]:
    """Train ``warmup + steps`` steps through the real trainer stack, side loops interleaved.

    Returns the framework's timed step durations (warm-up dropped) and the whole fit's seconds.
    """
    from temseg_ablation.app.build import build_datamodule, build_module, trainer_kwargs

    module = build_module(cfg, net)
    dm = build_datamodule(cfg, input_multiple=int(getattr(net, "input_multiple", 1)))
    timer = Interleaved(device, side_loops)
    kwargs = trainer_kwargs(cfg)
    # the job's own trainer settings, minus validation, checkpoints and console output
    kwargs.update(max_steps=warmup + steps, max_epochs=1, limit_val_batches=0,
                  enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False,
                  accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    logger, close, kind = job_logger(cfg, f"bench-{cfg.variant}-{cfg.data.crop_size}")
    trainer = pl.Trainer(logger=logger, callbacks=[timer], **kwargs)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        close()
    total = time.perf_counter() - t0
    if len(timer.framework) != warmup + steps:
        raise RuntimeError(f"framework ran {len(timer.framework)} steps, expected {warmup + steps}")
    return {"times": timer.framework[warmup:], "fit_total_s": total, "logger": kind}


def data_only_times(dm, n_batches: int) -> list[float]:
    """Seconds per batch of the framework's own train loader alone (crops + augmentation)."""
    times = []
    it = iter(dm.train_dataloader())
    for _ in range(n_batches):
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        times.append(time.perf_counter() - t0)
    return times


def measure(spec: TrainSpec, root: Path, device: torch.device, *, frame_size: int = 1024,
            paper_loop: bool = False, seed: int = 0) -> dict[str, Any]:
    """Framework, bare and (optionally) paper-style throughput for one spec, interleaved step by step."""
    from temseg_ablation.app.build import build_datamodule, build_net

    if spec.warmup < 1 or spec.steps < 1:
        raise ValueError(f"{spec}: need at least 1 warm-up and 1 timed step")
    quiet_logs()
    samples = spec.batch * (spec.warmup + spec.steps)
    cfg = bench_config(spec.variant, spec.crop, spec.batch, samples, root, frame_size,
                       spec.overrides)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))  # as the job does
    torch.manual_seed(seed)
    initial = build_net(cfg)
    dm = build_datamodule(cfg, input_multiple=int(getattr(initial, "input_multiple", 1)))
    dm.prepare_data()
    dm.setup("fit")
    batches = draw_batches(dm, min(spec.warmup + spec.steps, 4))
    lr = float(cfg.optim.lr)

    bare = BareLoop(copy.deepcopy(initial), batches, lr, device)
    side: list[Any] = [bare]
    paper = None
    if paper_loop:
        images = [b["image"][k, 0].numpy().astype(np.float64) for b in batches
                  for k in range(b["image"].shape[0])]
        masks = [b["mask"][k].numpy().astype(np.float64) for b in batches
                 for k in range(b["mask"].shape[0])]
        paper = PaperStyleLoop(copy.deepcopy(initial), images, masks, spec.batch, lr, device)
        side.append(paper)
    fw = framework_run(cfg, copy.deepcopy(initial).to(device), spec.warmup, spec.steps, device,
                       side)
    data_times = data_only_times(dm, min(spec.steps, 4))
    out: dict[str, Any] = {
        "spec": spec, "bare_times": bare.times[spec.warmup:], "framework_times": fw["times"],
        "data_s_per_batch": float(np.mean(data_times)) if data_times else float("nan"),
        "logger": fw["logger"], "log_every_n_steps": int(cfg.trainer.log_every_n_steps),
    }
    if paper is not None:
        metric_s, _ = paper.metrics_pass(spec.batch)
        out.update(paper_times=paper.times[spec.warmup:], paper_metric_s=metric_s)
    return out


SPIKE_FACTOR = 3.0


def quiet_steps(*loops: Sequence[float], factor: float = SPIKE_FACTOR) -> np.ndarray:
    """Mask of the step indices where no loop took over ``factor`` x its own median step.

    On a shared machine other processes stall a step now and then by several times its length;
    as the loops are interleaved step by step, dropping such steps from every loop alike keeps
    the comparison paired. Costs the framework pays every few steps (logging) are well below the
    factor and stay in.
    """
    arrays = [np.asarray(t, dtype=float) for t in loops]
    keep = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        if len(a) != len(keep):
            raise ValueError("interleaved loops must have the same number of timed steps")
        keep &= a <= factor * np.median(a)
    return keep


def overhead_interval(fw: Sequence[float], bare: Sequence[float], *, n_boot: int = 2000,
                      level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (%) of the overhead ``sum(fw) / sum(bare) - 1``.

    Steps are resampled in pairs (the loops are interleaved step by step), so the interval is
    the spread a rerun under the same load would show from this many timed steps.
    """
    f, b = np.asarray(fw, dtype=float), np.asarray(bare, dtype=float)
    if f.shape != b.shape or f.size < 2:
        raise ValueError("need at least two paired timed steps")
    idx = np.random.default_rng(seed).integers(0, f.size, size=(n_boot, f.size))
    ratios = (f[idx].sum(axis=1) / b[idx].sum(axis=1) - 1.0) * 100.0
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def rows_from(result: dict[str, Any], max_overhead_pct: float = 5.0) -> list[Row]:
    """Table rows for one measurement: framework vs bare, and framework vs paper style if run."""
    spec: TrainSpec = result["spec"]
    label = f"{VARIANT_LABEL.get(spec.variant, spec.variant)} {spec.crop}x{spec.crop} b{spec.batch}"
    if spec.overrides:
        label += f" [{', '.join(spec.overrides)}]"
    fw_t, bare_t = np.asarray(result["framework_times"]), np.asarray(result["bare_times"])
    loops = [fw_t, bare_t] + ([np.asarray(result["paper_times"])] if "paper_times" in result else [])
    keep = quiet_steps(*loops)
    fw = rate_from_times(fw_t[keep].tolist(), spec.batch)
    bare = rate_from_times(bare_t[keep].tolist(), spec.batch)
    overhead = (bare / fw - 1.0) * 100.0
    all_pairs = (fw_t.sum() / bare_t.sum() - 1.0) * 100.0
    data_pct = result["data_s_per_batch"] / (spec.batch / bare) * 100.0
    # Noise indicators: the step-by-step paired median (robust, but blind to costs paid every
    # few steps, so not the headline) and the spread of the kept bare steps.
    paired = (float(np.median(fw_t[keep] / bare_t[keep])) - 1.0) * 100.0
    cv = float(np.std(bare_t[keep]) / np.mean(bare_t[keep]) * 100.0)
    dropped = int((~keep).sum())
    noisy = (" (noisy machine)" if cv > 15.0 or abs(overhead - paired) > 5.0
             or dropped > len(keep) / 3 else "")
    spread = ""
    if int(keep.sum()) >= 2:
        lo, hi = overhead_interval(fw_t[keep], bare_t[keep])
        spread = f"; 90 % paired-bootstrap interval {lo:+.1f} to {hi:+.1f} %"
    steps = (f"{spec.warmup} warm-up + {spec.steps} timed steps, interleaved; {dropped} stalled "
             f"step(s) (> {SPIKE_FACTOR:g}x median) dropped from every loop, all steps: "
             f"{all_pairs:+.1f} %; paired-median {paired:+.1f} %{spread}; bare-step CV {cv:.0f} %")
    rows = [Row(
        group="training", item=f"{label}: framework train step", value=fw, unit="img/s",
        base_name="bare loop", base_value=bare, derived=f"overhead {overhead:+.1f} %",
        target=f"overhead < {max_overhead_pct:g} %",
        verdict=("pass" if overhead < max_overhead_pct else "FAIL") + noisy,
        note=(f"{steps}; data loading alone (crop + augment) = {data_pct:.1f} % of a bare step; "
              f"logger {result.get('logger', '?')}, every {result.get('log_every_n_steps', '?')} steps"),
        raw={"framework_step_s": result["framework_times"], "bare_step_s": result["bare_times"],
             "kept": keep.tolist(), "data_s_per_batch": result["data_s_per_batch"]},
    )]
    if "paper_times" in result:
        paper = rate_from_times(np.asarray(result["paper_times"])[keep].tolist(), spec.batch)
        rows.append(Row(
            group="paper_loop", item=f"{label}: framework vs paper-style loop", value=fw,
            unit="img/s", base_name="paper-style loop", base_value=paper,
            derived=f"gain {(fw / paper - 1) * 100:+.1f} % (bare vs paper {(bare / paper - 1) * 100:+.1f} %)",
            note=f"{steps}; paper's post-loop metric pass over one batch {result['paper_metric_s']:.2f} s, not in the rate",
            raw={"paper_step_s": result["paper_times"], "kept": keep.tolist(),
                 "paper_metric_s": result["paper_metric_s"]},
        ))
    return rows


def run(specs: Sequence[TrainSpec], root: Path, device: torch.device, *, frame_size: int = 1024,
        paper_variants: Sequence[str] = ("norm",), log=print) -> list[Row]:
    """Measure every spec; the paper-style loop runs for ``paper_variants``."""
    rows: list[Row] = []
    for spec in specs:
        t0 = time.perf_counter()
        result = measure(spec, root, device, frame_size=frame_size,
                         paper_loop=spec.variant in paper_variants and not spec.overrides)
        new = rows_from(result)
        rows += new
        for r in new:
            log(f"  {r.item}: {r.value:.3g} vs {r.base_name} {r.base_value:.3g} {r.unit} "
                f"({r.derived}) [{time.perf_counter() - t0:.0f} s]")
    return rows

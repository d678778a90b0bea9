"""Validation cost: one full validation pass (all metrics) as a share of one training epoch.

Runs the real job stack (``SegmentationModule`` + ``TEMDataModule`` + MLflow logger in a
``pl.Trainer``) with validation on, for ``epochs`` epochs, and stamps the time at the start of
each training epoch, at the start and end of its validation loop and at the end of the epoch.
Epochs after the first (which pays one-off costs) are averaged. The same validation frames are then
passed through the bare network without metrics, which splits the validation time into the
forward pass (bounded by the validation set's size) and the metrics' own cost. Each metric's
update + compute on those outputs is timed too, to show which one dominates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_common import Row, compose, job_logger, quiet_logs, synchronize


class EpochTimer(pl.Callback):
    """Stamps for every epoch: train start, validation start / end, train end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epochs: list[dict[str, float]] = []

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self.epochs.append({"train_start": self._now()})

    def on_validation_start(self, trainer, pl_module) -> None:  # noqa: D102
        if self.epochs and "val_start" not in self.epochs[-1]:
            self.epochs[-1]["val_start"] = self._now()

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: D102
        if self.epochs and "val_start" in self.epochs[-1]:
            self.epochs[-1]["val_end"] = self._now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        self.epochs[-1]["train_end"] = self._now()


def validation_config(root: Path, overrides: Sequence[str] = ()) -> Any:
    """The quick profile (the default experiment) for the Norm variant, held-out set off."""
    return compose(["model=norm", "data.heldout=false", "trainer.enable_progress_bar=false",
                    *overrides], root)


def _time_metrics(module, outputs: list[tuple[torch.Tensor, dict]]) -> dict[str, float]:
    """Seconds that each metric of ``module`` spends on update + compute for ``outputs``."""
    from temseg_ablation.metrics.pixel import binarize, otsu_thresholds

    times: dict[str, float] = {}
    for name, metric in module._metrics.items():
        if name.startswith("activations"):
            continue  # fed by forward hooks: timed by _time_activation_moments
        metric.reset()
        t0 = time.perf_counter()
        for out, batch in outputs:
            # fed as SegmentationModule.validation_step feeds them
            prob = F.softmax(out, dim=1)[:, 1]
            target = batch["mask"].bool()
            if name in ("pixel", "edge"):
                metric.update(prob, target)
            elif name == "dead":
                metric.update(out[:, 1])
            elif name == "separation":
                metric.update(out[:, 1], target)
            elif name == "edge_profile":
                metric.update(prob, batch.get("labels", target))
            elif name == "particle":
                otsu = otsu_thresholds(prob).view(-1, 1, 1)
                metric.update(binarize(prob, otsu), batch["labels"], batch["pixel_size_nm"])
            else:
                raise RuntimeError(f"bench_validation does not know how to feed metric {name!r}")
        metric.compute()
        synchronize(outputs[0][0].device)
        times[name] = time.perf_counter() - t0
        metric.reset()
    return times


def _time_activation_moments(module, images: list[torch.Tensor]) -> float:
    """Seconds the per-layer activation moments add (their forward hooks' work alone)."""
    from temseg_ablation.training.module import ActivationMoments

    probed = module._probed
    moments = ActivationMoments(len(probed)).to(images[0].device)
    total = 0.0
    for image in images:
        stash: list[tuple[int, torch.Tensor]] = []
        hooks = [layer.register_forward_hook(lambda m, a, out, i=i, s=stash: s.append((i, out)))
                 for i, layer in enumerate(probed)]
        try:
            with torch.no_grad():
                module.net(image)
        finally:
            for h in hooks:
                h.remove()
        synchronize(image.device)
        t0 = time.perf_counter()
        for i, act in stash:
            moments.update(i, act)
        synchronize(image.device)
        total += time.perf_counter() - t0
    moments.compute()
    return total


def measure(root: Path, device: torch.device, *, epochs: int = 3,
            overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``epochs`` epochs of the quick profile with validation; mean times after the first."""
    from temseg_ablation.app.build import build_datamodule, build_module, build_net, trainer_kwargs

    quiet_logs()
    cfg = validation_config(root, overrides)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))  # as the job does
    torch.manual_seed(int(cfg.seed))
    net = build_net(cfg)
    module = build_module(cfg, net)
    dm = build_datamodule(cfg, input_multiple=int(getattr(net, "input_multiple", 1)))
    timer = EpochTimer(device)
    kwargs = trainer_kwargs(cfg)
    kwargs.update(max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, check_val_every_n_epoch=1,
                  accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    logger, close, kind = job_logger(cfg, "bench-validation")
    trainer = pl.Trainer(logger=logger, callbacks=[timer], **kwargs)
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        close()
    timed = timer.epochs[1:] if len(timer.epochs) > 1 else timer.epochs
    if any("val_end" not in e for e in timed):
        raise RuntimeError("validation did not run in every epoch; check the trainer settings")
    # means over the epochs after the first (which pays one-off costs)
    train_s = float(np.mean([e["val_start"] - e["train_start"] for e in timed]))
    val_s = float(np.mean([e["val_end"] - e["val_start"] for e in timed]))

    # The same frames through the bare network, no metrics: the floor of any validation pass.
    module.to(device).eval()  # Lightning moves the module back to the CPU after fit
    outputs = []
    forward_s = 0.0
    with torch.no_grad():
        for _ in range(len(timed) - 1):  # passes before the kept one: same count as timed epochs
            for batch in dm.val_dataloader():
                image = batch["image"].to(device)
                synchronize(device)
                t1 = time.perf_counter()
                module.net(image)
                synchronize(device)
                forward_s += time.perf_counter() - t1
        for batch in dm.val_dataloader():
            # the batch goes to the device as Lightning would move it, before the timed forward
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            synchronize(device)
            t1 = time.perf_counter()
            outputs.append((module.net(batch["image"]), batch))
            synchronize(device)
            forward_s += time.perf_counter() - t1
    forward_s /= len(timed)
    metric_s = _time_metrics(module, outputs)
    if module._probed:
        metric_s["activations"] = _time_activation_moments(
            module, [b["image"] for _, b in outputs])
    n_train = len(dm.train_set)
    val_px = sum(int(b["image"].shape[-1] * b["image"].shape[-2]) for _, b in outputs)
    train_px = n_train * int(cfg.data.crop_size) ** 2
    return {"train_epoch_s": train_s, "val_s": val_s, "forward_s": forward_s,
            "metric_s": metric_s, "n_train": n_train, "n_val": len(outputs),
            "val_px": val_px, "train_px": train_px, "crop": int(cfg.data.crop_size),
            "epochs": timer.epochs, "overrides": list(overrides), "logger": kind}


def rows_from(result: dict[str, Any], target_pct: float = 10.0) -> list[Row]:
    """Two rows: the whole validation pass, and its metrics alone, each over a training epoch."""
    train, val, fwd = result["train_epoch_s"], result["val_s"], result["forward_s"]
    share = val / train * 100
    metrics_only = val - fwd  # negative only when machine noise exceeds the metrics' cost
    ms = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(result["metric_s"].items(),
                                                      key=lambda kv: -kv[1]))
    profile = "quick profile" + (" with overrides" if result.get("overrides") else "")
    setting = (f"{profile}, Norm: {result['n_train']} training crops of {result['crop']} px vs "
               f"{result['n_val']} whole validation frames ({result['val_px'] / result['train_px']:.1f}x "
               "the pixels of an epoch)")
    first = result["epochs"][0]
    first_val = first.get("val_end", 0.0) - first.get("val_start", 0.0)
    n = len(result["epochs"])
    setting += (f"; mean of epochs 2-{n} of {n} (the first epoch's validation took "
                f"{first_val:.1f} s: one-off compiles and caches); logger {result.get('logger', '?')}")
    return [
        Row(group="validation", item="full validation pass (threshold sweep, edge, dead output, "
            "activations, particle metrics)", value=val, unit="s",
            base_name="training epoch", base_value=train,
            derived=f"{share:.1f} % of an epoch", target=f"< {target_pct:g} %",
            verdict="pass" if share < target_pct else "FAIL", note=setting,
            raw={k: v for k, v in result.items() if k != "epochs"}),
        Row(group="validation", item="validation metrics alone (pass minus bare forward)",
            value=metrics_only, unit="s", base_name="training epoch", base_value=train,
            derived=f"{metrics_only / train * 100:.1f} % of an epoch", target=f"< {target_pct:g} %",
            verdict="pass" if metrics_only / train * 100 < target_pct else "FAIL",
            note=f"bare forward over the same frames {fwd:.2f} s; metric update+compute: {ms}"),
    ]


def run(root: Path, device: torch.device, *, epochs: int = 3, overrides: Sequence[str] = (),
        log=print) -> list[Row]:
    """Measure and return the validation rows."""
    rows = rows_from(measure(root, device, epochs=epochs, overrides=overrides))
    for r in rows:
        log(f"  {r.item}: {r.value:.3g} s vs {r.base_name} {r.base_value:.3g} s ({r.derived})")
    return rows

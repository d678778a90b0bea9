"""LightningModule: cross-entropy training of any network, with the full evaluation each epoch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from .metrics import (
    DeadOutputFraction,
    EdgeUncertainty,
    PixelThresholdMetrics,
    binarize,
    otsu_thresholds,
    scalar_items,
)


def _probed_layers(net: nn.Module) -> list[nn.Module]:
    """Layers whose outputs make up the 'spread of activations through the layers'."""
    from ..models.layers import ConvUnit

    units = [m for m in net.modules() if isinstance(m, ConvUnit)]
    return units or [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


class ActivationMoments(Metric):
    """Per-layer mean and standard deviation of activations, as DDP-summable moments."""

    full_state_update = False

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        for name in ("total", "total_sq", "count"):
            self.add_state(name, torch.zeros(n_layers, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, layer: int, activation: torch.Tensor) -> None:
        """Add one layer's activation tensor (any shape)."""
        a = activation.detach().to(torch.float64)
        self.total[layer] += a.sum()
        self.total_sq[layer] += (a * a).sum()
        self.count[layer] += a.numel()

    def compute(self) -> torch.Tensor:
        """Per-layer population standard deviations, (n_layers,)."""
        n = self.count.clamp(min=1)
        return (self.total_sq / n - (self.total / n) ** 2).clamp(min=0).sqrt()


class SegmentationModule(pl.LightningModule):
    """Two-class segmentation: cross-entropy on logits, softmax at inference (the paper's setup).

    Validation accumulates pixel metrics over thresholds and at Otsu, edge uncertainty, the dead
    output fraction, the spread of activations through the layers and (optionally) particle-level
    metrics. Results of the latest evaluation are kept in ``self.results[prefix]`` for tracking.
    ``net_config`` (the ``build_model`` arguments) and ``preprocess`` (pixel size, blur, ...) are
    stored in every checkpoint, so a checkpoint alone rebuilds the network and its input pipeline.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        net_config: dict[str, Any] | None = None,
        preprocess: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        edge_band_px: int = 3,
        particle_metrics: bool = True,
        min_particle_px: int = 0,
        match_iou: float = 0.5,
        boundary_tolerance_px: int = 2,
    ) -> None:
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.prefix = "val"
        self.results: dict[str, dict[str, Any]] = {}
        self._probed = _probed_layers(net)
        self._metrics = nn.ModuleDict(self._new_metrics())
        self._hooks: list[Any] = []

    def _new_metrics(self) -> dict[str, nn.Module]:
        h = self.hparams
        metrics: dict[str, nn.Module] = {
            "pixel": PixelThresholdMetrics(),
            "edge": EdgeUncertainty(band_px=h.edge_band_px),
            "dead": DeadOutputFraction(),
            "activations": ActivationMoments(len(self._probed)),
        }
        if h.particle_metrics:
            from .particle_metrics import ParticleMetrics

            metrics["particle"] = ParticleMetrics(
                iou_threshold=h.match_iou,
                min_size_px=h.min_particle_px,
                boundary_tolerance_px=h.boundary_tolerance_px,
            )
        return metrics

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Particle probability (B, H, W): softmax over the two class outputs."""
        return F.softmax(self.net(x), dim=1)[:, 1]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        logits = self.net(batch["image"])
        loss = F.cross_entropy(logits, batch["mask"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0])
        return loss

    def on_train_epoch_start(self) -> None:  # noqa: D102
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "train_set", None) is not None:
            dm.train_set.set_epoch(self.current_epoch)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:  # noqa: D102
        for m in self._metrics.values():
            m.reset()
        moments = self._metrics["activations"]
        for i, layer in enumerate(self._probed):
            hook = layer.register_forward_hook(
                lambda mod, args, out, i=i: moments.update(i, out))
            self._hooks.append(hook)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # noqa: D102
        out = self.net(batch["image"])
        prob = F.softmax(out, dim=1)[:, 1]
        target = batch["mask"].bool()
        self.log(f"{self.prefix}/loss", F.cross_entropy(out, batch["mask"]), on_epoch=True,
                 batch_size=out.shape[0], sync_dist=False, add_dataloader_idx=False)
        self._metrics["pixel"].update(prob, target)
        self._metrics["edge"].update(prob, target)
        self._metrics["dead"].update(out[:, 1])
        if "particle" in self._metrics:
            # Particles are counted at each image's Otsu threshold, the paper's practical choice.
            otsu = otsu_thresholds(prob).view(-1, 1, 1)
            self._metrics["particle"].update(
                binarize(prob, otsu), batch["labels"], batch["pixel_size_nm"].to(prob.device)
            )

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        pixel = self._metrics["pixel"].compute()
        result: dict[str, Any] = {"pixel": {k: v.detach().cpu() for k, v in pixel.items()}}
        scalars = {
            "f1_otsu": pixel["otsu_f1_mean"], "f1_otsu_pooled": pixel["otsu_f1"],
            "precision_otsu": pixel["otsu_precision_mean"], "recall_otsu": pixel["otsu_recall_mean"],
            "iou_otsu": pixel["otsu_iou_mean"], "f1_otsu_std": pixel["otsu_f1_std"],
            "otsu_threshold": pixel["mean_otsu_threshold"],
        }
        thr = pixel["threshold"]
        for t in (0.4, 0.5, 0.7):
            i = int(torch.argmin((thr - t).abs()))
            scalars[f"f1_at_{t:.1f}"] = pixel["f1_mean"][i]
            scalars[f"precision_at_{t:.1f}"] = pixel["precision_mean"][i]
            scalars[f"recall_at_{t:.1f}"] = pixel["recall_mean"][i]
        scalars["f1_best"] = pixel["f1_mean"].max()
        scalars["edge_uncertainty"] = self._metrics["edge"].compute()
        scalars["dead_output_fraction"] = self._metrics["dead"].compute()
        if "particle" in self._metrics:
            part = self._metrics["particle"].compute()
            result["particle"] = dict(part)
            scalars.update({f"particle_{k}": v for k, v in part.items()})
        if self._probed:
            stds = self._metrics["activations"].compute().cpu()
            result["activation_std"] = stds.tolist()
            # max / min of the per-layer standard deviations: the paper's "large variation in
            # raw activation values" (Table 1, row 4)
            scalars["act_spread_ratio"] = float(stds.max() / stds.min().clamp(min=1e-12))
            scalars["act_spread_log10"] = float(np.log10(max(scalars["act_spread_ratio"], 1e-12)))
        flat = scalar_items({k: torch.as_tensor(v, dtype=torch.float64) for k, v in scalars.items()})
        result["scalars"] = flat
        self.results[self.prefix] = result
        finite = {f"{self.prefix}/{k}": v for k, v in flat.items() if np.isfinite(v)}
        # Values are already reduced over ranks by the metrics; no extra sync needed.
        self.log_dict(finite, sync_dist=False, add_dataloader_idx=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)

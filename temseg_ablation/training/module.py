"""LightningModule: cross-entropy training of any network, with the full evaluation each epoch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ..data.warp import affine_warp_batch
from ..metrics.activation import (  # noqa: F401 - ActivationMoments re-exported for benchmarks
    ActivationMoments,
    output_norm_params,
    probed_layers,
    spread_ratio,
)
from ..metrics.edges import EdgeProfileMetrics
from ..metrics.pixel import (
    PixelThresholdMetrics,
    binarize,
    otsu_thresholds,
    scalar_items,
)
from ..metrics.separation import ParticleSeparation
from ..metrics.uncertainty import DeadOutputFraction, EdgeUncertainty


def _probed_layers(net: nn.Module) -> list[nn.Module]:
    """Layers whose outputs make up the post-norm 'spread of activations through the layers'."""
    return probed_layers(net, prenorm=False)


class SegmentationModule(pl.LightningModule):
    """Two-class segmentation: cross-entropy on logits, softmax at inference (the paper's setup).

    Validation accumulates pixel metrics over thresholds and at Otsu, edge uncertainty, the dead
    output fraction, the particle logit's AUROC, edge profiles (ramp width, offset), the spread
    of activations through the layers after and before normalisation, the output norm's affine
    and (optionally) particle-level metrics. Results of the latest evaluation are kept in ``self.results[prefix]`` for tracking.
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
        # (optimiser step, val/f1_otsu) of every validation run while fitting: the learning curve
        # the convergence rule judges; kept in checkpoints so a resumed job keeps its history
        self.val_curve: list[tuple[int, float]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self._probed = _probed_layers(net)
        self._probed_prenorm = probed_layers(net, prenorm=True)
        self._metrics = nn.ModuleDict(self._new_metrics())
        self._hooks: list[Any] = []
        # this epoch's training loss, summed over samples on this rank (see _log_train_epoch_loss)
        self._epoch_loss_sum, self._epoch_loss_n, self._epoch_loss_logged = 0.0, 0, False

    def _new_metrics(self) -> dict[str, nn.Module]:
        h = self.hparams
        metrics: dict[str, nn.Module] = {
            "pixel": PixelThresholdMetrics(),
            "edge": EdgeUncertainty(band_px=h.edge_band_px),
            "dead": DeadOutputFraction(),
            "activations": ActivationMoments(len(self._probed)),
            "activations_prenorm": ActivationMoments(len(self._probed_prenorm)),
            "separation": ParticleSeparation(),
            "edge_profile": EdgeProfileMetrics(),
        }
        if h.particle_metrics:
            from ..metrics.particle import ParticleMetrics

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

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply the affine maps a training batch carries (``data.augment.affine_device``) on
        the batch's device, so the interpolating augmentation does not hold up the loader."""
        if isinstance(batch, dict) and "affine" in batch:
            batch = dict(batch)
            image, labels = affine_warp_batch(batch["image"], batch["labels"], batch.pop("affine"))
            batch.update(image=image, labels=labels, mask=(labels > 0).long())
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        logits = self.net(batch["image"])
        loss = F.cross_entropy(logits, batch["mask"])
        n = batch["image"].shape[0]
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self._epoch_loss_sum += float(loss.detach()) * n
        self._epoch_loss_n += n
        return loss

    def _log_train_epoch_loss(self) -> None:
        # Lightning logs an epoch's on_epoch values only after the epoch's checkpoints are
        # written, so a kill in between resumed past an epoch whose loss never reached the
        # store; logged here, before any checkpoint of the epoch, at the step Lightning used
        if self._epoch_loss_logged or not self._epoch_loss_n:
            return
        self._epoch_loss_logged = True
        point = {"train/loss_epoch": self._epoch_loss_sum / self._epoch_loss_n,
                 "epoch": float(self.current_epoch)}
        for logger in self.loggers:
            logger.log_metrics(point, step=max(int(self.global_step) - 1, 0))

    def on_train_epoch_end(self) -> None:  # noqa: D102
        self._log_train_epoch_loss()  # epochs without validation; module hooks precede checkpoints

    def on_train_epoch_start(self) -> None:  # noqa: D102
        self._epoch_loss_sum, self._epoch_loss_n, self._epoch_loss_logged = 0.0, 0, False
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "train_set", None) is not None:
            dm.train_set.set_epoch(self.current_epoch)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:  # noqa: D102
        for m in self._metrics.values():
            m.reset()
        for key, layers in (("activations", self._probed),
                            ("activations_prenorm", self._probed_prenorm)):
            moments = self._metrics[key]
            for i, layer in enumerate(layers):
                hook = layer.register_forward_hook(
                    lambda mod, args, out, i=i, m=moments: m.update(i, out))
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
        # the particle channel's raw output, before the softmax couples it to the other class
        self._metrics["separation"].update(out[:, 1], target)
        self._metrics["edge_profile"].update(prob, batch.get("labels", target))
        if "particle" in self._metrics:
            # Particles are counted at each image's Otsu threshold, the paper's practical choice.
            otsu = otsu_thresholds(prob).view(-1, 1, 1)
            self._metrics["particle"].update(
                binarize(prob, otsu), batch["labels"], batch["pixel_size_nm"].to(prob.device)
            )

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        if self.prefix == "val" and self._fitting() and self.trainer.is_last_batch:
            self._log_train_epoch_loss()  # epoch-end validation runs before the checkpoints
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
        sep = self._metrics["separation"].compute()
        scalars["particle_auroc"] = sep["auroc"]
        scalars["particle_auroc_bin_error"] = sep["auroc_bin_error"]
        scalars["particle_dead_on_true"] = sep["dead_on_true"]
        scalars.update(self._metrics["edge_profile"].compute())
        if "particle" in self._metrics:
            part = dict(self._metrics["particle"].compute())
            result["particle"] = dict(part)
            for t in (1, 2, 3):
                if f"boundary_f1_{t}px" in part:
                    scalars[f"boundary_f1_{t}px"] = part.pop(f"boundary_f1_{t}px")
            scalars.update({f"particle_{k}": v for k, v in part.items()})
        for key, label in (("activations", "act_spread"), ("activations_prenorm", "act_spread_prenorm")):
            if not len(self._metrics[key].count):
                continue
            stds = self._metrics[key].compute().cpu()
            result[f"{key}_std"] = stds.tolist()
            # max / min of the per-layer standard deviations: the paper's "large variation in
            # raw activation values" (Table 1, row 4); the pre-norm one is the Table 1 measure,
            # the post-norm one is ~1 for batch-norm nets by construction
            ratio = spread_ratio(stds)
            scalars[f"{label}_ratio"] = ratio
            scalars[f"{label}_log10"] = float(np.log10(ratio)) if ratio > 0 else float("nan")
        if "activations_std" in result:
            result["activation_std"] = result.pop("activations_std")
        scalars.update(output_norm_params(self.net))
        flat = scalar_items({k: torch.as_tensor(v, dtype=torch.float64) for k, v in scalars.items()})
        result["scalars"] = flat
        self.results[self.prefix] = result
        if self.prefix == "val" and self._fitting():
            self._record_curve(int(self.global_step), float(flat.get("f1_otsu", float("nan"))))
        finite = {f"{self.prefix}/{k}": v for k, v in flat.items() if np.isfinite(v)}
        # Values are already reduced over ranks by the metrics; no extra sync needed.
        self.log_dict(finite, sync_dist=False, add_dataloader_idx=False)

    def _fitting(self) -> bool:
        trainer = self._trainer
        return (trainer is not None and trainer.state.fn == "fit"
                and not trainer.sanity_checking)

    def _record_curve(self, step: int, value: float) -> None:
        # a resumed job can validate again at the step its checkpoint ended on: keep the newest
        self.val_curve = [p for p in self.val_curve if p[0] < step] + [(step, value)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        checkpoint["val_curve"] = [[int(s), float(v)] for s, v in self.val_curve]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        self.val_curve = [(int(s), float(v)) for s, v in checkpoint.get("val_curve", [])]

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)

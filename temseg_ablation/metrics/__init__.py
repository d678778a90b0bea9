"""Segmentation metrics: pixel, edge and particle measures as pure functions and DDP-summable
torchmetrics, plus the learning-curve plateau rule. Used by training, segment, tracking and
report alike."""

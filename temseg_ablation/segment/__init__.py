"""Segment real frames with a trained network (or the classical pipeline) and measure particles.

Library functions are pure and work on arrays and tables; the batch pipeline is
``run_segmentation(inputs, SegmentOptions(...))`` (``pipeline``) and the command line in ``cli``
only parses its arguments into ``SegmentOptions`` (``python -m temseg_ablation.segment --help``).
"""

from .infer import (
    FrameSegmentation,
    model_pixel_size_nm,
    predict_proba,
    prepare_image,
    receptive_field_px,
    rescale_factor,
    segment_frames,
    segment_image,
)
from .loading import load_model, register_model
from .measure import frame_summary, label_particles, measure_labels, measure_particles
from .pipeline import SegmentError, SegmentOptions, default_tracking_uri, run_segmentation
from .track import coarsening_curves, estimate_shift, link_frames, link_particles

__all__ = [
    "FrameSegmentation",
    "SegmentError",
    "SegmentOptions",
    "coarsening_curves",
    "default_tracking_uri",
    "estimate_shift",
    "frame_summary",
    "label_particles",
    "link_frames",
    "link_particles",
    "load_model",
    "measure_labels",
    "measure_particles",
    "model_pixel_size_nm",
    "predict_proba",
    "prepare_image",
    "receptive_field_px",
    "register_model",
    "rescale_factor",
    "run_segmentation",
    "segment_frames",
    "segment_image",
]

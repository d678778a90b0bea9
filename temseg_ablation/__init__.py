"""temseg-ablation: measured ablations of CNN segmentation for high-resolution TEM frames."""

__version__ = "0.1.0"

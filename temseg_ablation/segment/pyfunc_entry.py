"""The code MLflow runs to load a temseg pyfunc model ("models from code"; see ``pyfunc.py``)."""

from mlflow.models import set_model

from temseg_ablation.segment.pyfunc import SegmentationModel

set_model(SegmentationModel())

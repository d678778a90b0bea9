"""Find the network to segment with: a checkpoint file, an MLflow run id or a registered model.

Every path ends in :func:`temseg_ablation.models.io.load_checkpoint` (``weights_only`` loading),
so nothing downloaded from a tracking store can run code.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from ..models.io import CheckpointError, TrainedModel, load_checkpoint

__all__ = [
    "CHECKPOINT_ARTIFACT",
    "DEFAULT_TRACKING_URI",
    "ModelSpecError",
    "load_model",
    "register_model",
]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHECKPOINT_ARTIFACT = "checkpoints/best.ckpt"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_MODEL_URI = re.compile(r"models:/([^/@]+)/([^/]+)")
_MODEL_ALIAS = re.compile(r"models:/([^/@]+)@([^/@]+)")
#: artifact folder of a run's pyfunc model (``register_model`` logs it)
PYFUNC_ARTIFACT = "model"


class ModelSpecError(ValueError):
    """A ``--model`` value that names no usable model; ``str`` is one line."""


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    from ..tracking.uri import absolute_uri

    uri = absolute_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        # MLflow would silently create an empty store at a mistyped path
        if not db.is_file():
            raise ModelSpecError(f"{db}: tracking store not found (set --tracking-uri)")
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _download(artifact_uri: str, tracking_uri: str, dst: Path) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=tracking_uri))


def _load_from_run(run_id: str, tracking_uri: str, map_location: str) -> TrainedModel:
    client, uri = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as err:  # MlflowException for unknown ids
        raise ModelSpecError(f"run {run_id}: not found in {uri} ({str(err).splitlines()[0][:120]})") from None
    model = _fetch_checkpoint(f"{run.info.artifact_uri}/{CHECKPOINT_ARTIFACT}", uri, map_location,
                              failure=f"run {run_id}: no artifact {CHECKPOINT_ARTIFACT}")
    model.source = f"run {run_id} ({uri})"
    return model


def _fetch_checkpoint(url: str, uri: str, map_location: str, *, failure: str) -> TrainedModel:
    """Download a checkpoint artifact into a temporary folder and load it; ``failure`` starts the
    one-line error when the download fails."""
    with tempfile.TemporaryDirectory(prefix="temseg-model-") as tmp:
        try:
            path = _download(url, uri, Path(tmp))
        except Exception as err:
            raise ModelSpecError(f"{failure} ({str(err).splitlines()[0][:120]})") from None
        return load_checkpoint(path, map_location=map_location)


def _version_checkpoint(source: str) -> str:
    """Where a model version's ``best.ckpt`` lies: inside its pyfunc model's ``artifacts/``, or
    (versions registered before pyfunc models) in the checkpoint folder it points at."""
    from .pyfunc import CHECKPOINT_KEY

    source = source.rstrip("/")
    if source.endswith(f"/{PYFUNC_ARTIFACT}"):
        return f"{source}/artifacts/{CHECKPOINT_KEY}"
    return f"{source}/best.ckpt"


def _load_registered(name: str, version: str, tracking_uri: str, map_location: str, *,
                     alias: str | None = None) -> TrainedModel:
    client, uri = _client(tracking_uri)
    spec = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ModelSpecError(f"models:/{name}/latest: no versions registered in {uri}")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, version)
    except ModelSpecError:
        raise
    except Exception as err:
        raise ModelSpecError(f"{spec}: not found in {uri} "
                             f"({str(err).splitlines()[0][:120]})") from None
    model = _fetch_checkpoint(_version_checkpoint(mv.source), uri, map_location,
                              failure=f"{spec}: cannot fetch best.ckpt from {mv.source}")
    model.source = f"models:/{name}/{mv.version} (run {mv.run_id}, {uri})"
    return model


def load_model(spec: str, tracking_uri: str = DEFAULT_TRACKING_URI,
               map_location: str = "cpu") -> TrainedModel:
    """Load the network named by ``spec``: a checkpoint path, a run id, ``models:/NAME/VERSION``
    (``latest`` for the newest) or ``models:/NAME@ALIAS``.

    A run id fetches the run's ``checkpoints/best.ckpt`` artifact; a registered model version
    fetches ``best.ckpt`` from the version's source. Raises ``ModelSpecError`` or
    ``CheckpointError`` with a one-line message.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return load_checkpoint(path, map_location=map_location)
    m = _MODEL_ALIAS.fullmatch(spec)
    if m:
        return _load_registered(m.group(1), "", tracking_uri, map_location, alias=m.group(2))
    m = _MODEL_URI.fullmatch(spec)
    if m:
        return _load_registered(m.group(1), m.group(2), tracking_uri, map_location)
    if _RUN_ID.fullmatch(spec):
        return _load_from_run(spec, tracking_uri, map_location)
    if path.suffix or "/" in spec:
        raise CheckpointError(path, "no such checkpoint file")
    raise ModelSpecError(f"--model {spec!r}: not a checkpoint file, an MLflow run id (32 hex "
                         "digits), models:/NAME/VERSION, models:/NAME@ALIAS, 'classical' or 'blobs'")


def register_model(run_id: str, name: str, tracking_uri: str = DEFAULT_TRACKING_URI, *,
                   alias: str | None = None) -> str:
    """Register run ``run_id``'s network as a new version of model ``name``; returns the version.

    The run's ``checkpoints/best.ckpt`` becomes a pyfunc model logged into the run as
    ``model/`` (once; a later registration reuses it), and the version's source is that model,
    so ``mlflow.pyfunc.load_model("models:/NAME/VERSION")`` segments frames and
    ``--model models:/NAME/VERSION`` loads its checkpoint. ``alias`` (e.g. ``champion``) is
    then set on the new version (``models:/NAME@ALIAS``).
    """
    from .pyfunc import log_pyfunc

    client, uri = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as err:
        raise ModelSpecError(f"run {run_id}: not found in {uri} "
                             f"({str(err).splitlines()[0][:120]})") from None
    names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    if CHECKPOINT_ARTIFACT not in names:
        raise ModelSpecError(f"run {run_id}: has no {CHECKPOINT_ARTIFACT} artifact to register")
    logged = {a.path for a in client.list_artifacts(run_id, PYFUNC_ARTIFACT)}
    source = f"{run.info.artifact_uri.rstrip('/')}/{PYFUNC_ARTIFACT}"
    if f"{PYFUNC_ARTIFACT}/MLmodel" not in logged:
        with tempfile.TemporaryDirectory(prefix="temseg-register-") as tmp:
            ckpt = _download(f"{run.info.artifact_uri}/{CHECKPOINT_ARTIFACT}", uri, Path(tmp))
            load_checkpoint(ckpt)  # refuse a checkpoint that would run code before logging it
            source = log_pyfunc(client, run_id, ckpt, PYFUNC_ARTIFACT)
    try:
        client.create_registered_model(name)
    except Exception:  # already registered: add a version
        client.get_registered_model(name)
    mv = client.create_model_version(name, source=source, run_id=run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)

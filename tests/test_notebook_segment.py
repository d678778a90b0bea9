"""``notebooks/segment_your_frames.ipynb`` runs from top to bottom on a real and a synthetic frame."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REALDATA, ROOT

NOTEBOOK = ROOT / "notebooks" / "segment_your_frames.ipynb"


def _kernel_dir(tmp) -> str:
    """A kernelspec running this interpreter, so the test needs no user-level kernel install."""
    spec = tmp / "kernels" / "temseg-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "temseg test", "language": "python"}))
    return str(tmp)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["real", "synthetic"])
def test_segment_notebook_executes(source, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    real = REALDATA / "JEOL HAADF Image.dm4"
    if source == "real" and not real.is_file():
        pytest.skip("../shared/realdata is not here (a user's clone)")
    monkeypatch.setenv("JUPYTER_PATH", _kernel_dir(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    if source == "real":  # the notebook's own default when ../shared is there
        monkeypatch.delenv("TEMSEG_FRAMES", raising=False)
    else:
        monkeypatch.setenv("TEMSEG_FRAMES", "synthetic")
    monkeypatch.setenv("TEMSEG_OUT", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="temseg-test", timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"
              or (o.get("output_type") == "stream" and o.get("name") == "stderr"
                  and "Traceback" in o.get("text", ""))]
    assert not errors, errors
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 3  # frame, labels, sizes
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["particles"] >= 1 and summary["diameter_unit"] == "nm"
    # the label TIFF's calibration was read back with tifffile and equals the input's
    px = "1.249" if source == "real" else None
    assert "labels, " in text and " nm per pixel" in text
    if px:
        assert f"{px} nm per pixel" in text and "1.249 nm/px" in text
    else:
        assert "ground truth: " in text
    assert nbformat.validate(nb) is None

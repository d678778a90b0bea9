"""Write the hostile-input corpus used by tests/test_readers.py.

Run ``python tests/corpus/make_corpus.py`` from the repository root to regenerate the files
beside this script. Every file is tiny, synthetic and deterministic (the truncated copy of the
real DM4 is made by tests/test_readers.py at test time, never committed).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

from temseg_ablation.data.readers import SUPPORTED_EXTENSIONS

HERE = Path(__file__).resolve().parent
REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
REAL_DM4 = "JEOL HAADF Image.dm4"

ZERO_BYTE_EXTENSIONS = SUPPORTED_EXTENSIONS  # one empty file per readable format


def _garbage(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _npy_header_only(path: Path, shape: tuple[int, ...], dtype: str) -> None:
    """An NPY file whose header declares ``shape`` but which holds no data at all."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
        )


def make_corpus(out_dir: Path = HERE, realdata: Path | None = REALDATA) -> list[Path]:
    """Write every corpus file into ``out_dir``; return the paths written."""
    import tifffile
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def out(name: str) -> Path:
        p = out_dir / name
        written.append(p)
        return p

    # Truncated DM4: a DM4 header (version 4, root length, little-endian flag) then garbage.
    out("truncated_synthetic.dm4").write_bytes(struct.pack(">IQI", 4, 4096, 1) + _garbage(240, 1))
    # A truncated copy of the real (GPL-licensed) DM4 is made at test time, never committed.

    # Truncated TIFF: a valid 32 x 32 uint16 frame cut in the middle of its pixel data.
    full = out_dir / "_full.tif"
    tifffile.imwrite(full, np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    data = full.read_bytes()
    full.unlink()
    out("truncated.tif").write_bytes(data[: len(data) // 2])

    # Truncated PNG and NPY.
    rng = np.random.default_rng(2)
    full = out_dir / "_full.png"
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    full.unlink()
    out("truncated.png").write_bytes(data[: len(data) // 2])
    full = out_dir / "_full.npy"
    np.save(full, np.ones((64, 64), np.float32))
    data = full.read_bytes()
    full.unlink()
    out("truncated.npy").write_bytes(data[:1000])

    for ext in ZERO_BYTE_EXTENSIONS:
        out(f"zero_bytes{ext}").write_bytes(b"")

    frame = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    nan = frame.copy()
    nan[3, 4] = np.nan
    inf = frame.copy()
    inf[0, 0] = np.inf
    np.save(out("nan.npy"), nan)
    np.save(out("inf.npy"), inf)
    tifffile.imwrite(out("nan.tif"), nan)
    tifffile.imwrite(out("inf.tif"), -inf)
    np.save(out("float64_overflow.npy"), np.full((4, 4), 1e300))

    np.save(out("one_pixel.npy"), np.ones((1, 1), np.float32))
    Image.fromarray(np.full((1, 1), 7, np.uint8)).save(out("one_pixel.png"))
    np.save(out("one_row.npy"), np.ones((1, 16), np.float32))

    _npy_header_only(out("huge_header.npy"), (10**6, 10**6), "<f4")
    np.save(out("complex.npy"), np.ones((4, 4), np.complex64))
    np.save(out("object.npy"), np.array([[1, "a"], [None, 2.5]], dtype=object), allow_pickle=True)
    np.save(out("strings.npy"), np.array([["ab", "cd"], ["ef", "gh"]]))
    np.save(out("bool_image.npy"), np.eye(4, dtype=bool))
    np.save(out("four_d.npy"), np.zeros((2, 2, 3, 3), np.float32))

    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    colour[2:6, 2:6, 2] = 255
    Image.fromarray(colour).save(out("rgb.png"))

    np.save(out("image_for_mask.npy"), np.zeros((16, 16), np.float32))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(out("mask_wrong_shape.png"))
    np.save(out("mask_three_frames.npy"), np.zeros((3, 16, 16), bool))
    labels = np.zeros((16, 16), np.uint8)
    labels[2:5, 2:5], labels[8:12, 8:12], labels[1:3, 10:14] = 1, 2, 3
    Image.fromarray(labels).save(out("labels_mask.png"))
    np.save(out("half_mask.npy"), np.full((4, 4), 0.5, np.float32))

    out("unsupported.xyz").write_bytes(b"not an image\n")
    out("garbage.emd").write_bytes(_garbage(512, 3))
    out("garbage.ser").write_bytes(_garbage(512, 4))
    out("orphan.emi").write_bytes(b"<ObjectInfo></ObjectInfo>\n")
    out("garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + _garbage(300, 5))
    # An HDF5 signature followed by nothing useful.
    out("truncated.hspy").write_bytes(b"\x89HDF\r\n\x1a\n" + _garbage(256, 6))
    return written


if __name__ == "__main__":
    paths = make_corpus()
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total} bytes, to {HERE}", file=sys.stderr)

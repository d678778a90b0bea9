"""Tests for temseg_ablation.data.readers: real files, a hostile corpus and property tests."""

from __future__ import annotations

import json
import pickle
import struct
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from temseg_ablation.data.readers import (
    SUPPORTED_EXTENSIONS,
    ImageStack,
    ReadError,
    expand_inputs,
    read_frames,
    read_many,
    read_mask,
    read_pair,
    to_dark_particles,
    unit_to_nm,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
REAL_DM4 = REALDATA / "JEOL HAADF Image.dm4"
REAL_HSPY = REALDATA / "SiO2 HAADF Image.hspy"

needs_realdata = pytest.mark.skipif(
    not (REAL_DM4.is_file() and REAL_HSPY.is_file()), reason="../shared/realdata is absent"
)


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "\r" not in text, text
    return text


# --------------------------------------------------------------------------- writers for tests


def _write_hspy(path: Path, data: np.ndarray, scale: float, units: str) -> None:
    from rsciio.hspy import file_writer

    names = ["frame", "y", "x"][-data.ndim :]
    axes = [
        {
            "name": n,
            "size": s,
            "scale": 1.0 if n == "frame" else scale,
            "offset": 0.0,
            "units": "" if n == "frame" else units,
            "navigate": n == "frame",
        }
        for n, s in zip(names, data.shape, strict=True)
    ]
    signal = {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": "synthetic"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
        "tmp_parameters": {},
        "attributes": {"_lazy": False},
        "learning_results": {},
        "models": {},
        "package_info": {"name": "temseg-ablation-tests", "version": "0"},
    }
    file_writer(str(path), signal)


def _write_velox(path: Path, images: list[tuple[np.ndarray, float, str]]) -> None:
    """Minimal Velox-style EMD: each entry is (frames (N, H, W), pixel size in m, detector)."""
    with h5py.File(path, "w") as f:
        version = json.dumps({"format": "Velox", "version": "11"}).encode()
        f.create_dataset("Version", data=np.array([version]))
        for i, (frames, pixel_m, detector) in enumerate(images):
            group = f.create_group(f"Data/Image/{i:032x}")
            group.create_dataset("Data", data=np.moveaxis(frames, 0, -1))  # stored (H, W, N)
            meta = {
                "BinaryResult": {
                    "PixelSize": {"width": repr(pixel_m), "height": repr(pixel_m)},
                    "PixelUnitX": "m",
                    "PixelUnitY": "m",
                    "Offset": {"x": "0", "y": "0"},
                    "DetectorIndex": str(i),
                },
                "Detectors": {f"Detector-{i}": {"DetectorName": detector}},
                "Acquisition": {},
                "CustomProperties": {},
                "Scan": {"FrameTime": "1.0"},
            }
            raw = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
            group.create_dataset("Metadata", data=raw[:, np.newaxis])


def _write_ser(path: Path, image: np.ndarray, pixel_m: float) -> None:
    """Minimal TIA .ser (series version 0x210) holding one float32 image (H, W)."""
    h, w = image.shape
    dims = struct.pack("<IddIII", 1, 0.0, 1.0, 0, 0, 0)
    offset_array = 30 + len(dims)
    data_offset = offset_array + 8
    element = struct.pack("<ddIddIHII", 0.0, pixel_m, 0, 0.0, pixel_m, 0, 7, w, h)
    # TIA stores rows bottom-up; rosettasciio flips them back.
    pixels = np.ascontiguousarray(image[::-1], dtype="<f4").tobytes()
    tag = struct.pack("<HHI", 0x4152, 0, 0)
    tag_offset = data_offset + len(element) + len(pixels)
    header = struct.pack(
        "<HHHIIIIII", 0x4949, 0x0197, 0x0210, 0x4122, 0x4152, 1, 1, offset_array, 1
    )
    path.write_bytes(
        header + dims + struct.pack("<II", data_offset, tag_offset) + element + pixels + tag
    )


# --------------------------------------------------------------------------- real files


@needs_realdata
def test_real_dm4() -> None:
    stack = read_frames(REAL_DM4, particles="bright")
    assert stack.images.shape == (1, 112, 112)
    assert stack.images.dtype == np.float32
    assert np.isfinite(stack.images).all()
    assert stack.pixel_size_nm == pytest.approx(1.249, rel=1e-3)
    assert stack.metadata["particles"] == "bright"
    assert stack.metadata["original_dtype"] == "float32"
    assert stack.path == REAL_DM4


@needs_realdata
def test_real_hspy() -> None:
    stack = read_frames(REAL_HSPY)
    assert stack.images.shape == (1, 128, 128)
    assert stack.images.dtype == np.float32
    assert np.isfinite(stack.images).all()
    assert stack.pixel_size_nm == pytest.approx(8.552, rel=1e-3)
    # rosettasciio reports the calibration in micrometres (micro sign U+00B5).
    assert unit_to_nm(stack.metadata["units"]) == 1000.0
    assert stack.metadata["acquisition_mode"] == "STEM"
    assert stack.metadata["particles"] == "dark"


@needs_realdata
def test_real_files_are_not_inverted_and_polarity_flip_works() -> None:
    stack = read_frames(REAL_DM4, particles="bright")
    raw = stack.images
    dark = to_dark_particles(raw, "bright")
    assert dark.shape == raw.shape and dark.dtype == np.float32
    np.testing.assert_allclose(dark.min(), raw.min(), rtol=1e-6)
    np.testing.assert_allclose(dark.max(), raw.max(), rtol=1e-6)
    # The brightest pixel of the HAADF frame becomes the darkest.
    assert np.argmax(raw) == np.argmin(dark)


# --------------------------------------------------------------------------- corpus


CORPUS_CASES: list[tuple[str, str, str]] = [
    ("truncated_synthetic.dm4", "frames", "corrupt DM4"),
    ("truncated.tif", "frames", "truncated"),
    ("truncated.png", "frames", "truncated"),
    ("truncated.npy", "frames", "truncated"),
    ("truncated.hspy", "frames", "corrupt"),
    *[(f"zero_bytes{ext}", "frames", "empty file") for ext in SUPPORTED_EXTENSIONS],
    ("zero_bytes.png", "mask", "empty file"),
    ("nan.npy", "frames", "NaN or Inf"),
    ("inf.npy", "frames", "NaN or Inf"),
    ("nan.tif", "frames", "NaN or Inf"),
    ("inf.tif", "frames", "NaN or Inf"),
    ("nan.npy", "mask", "NaN or Inf"),
    ("float64_overflow.npy", "frames", "float32 range"),
    ("one_pixel.npy", "frames", "too small"),
    ("one_pixel.png", "frames", "too small"),
    ("one_row.npy", "frames", "too small"),
    ("huge_header.npy", "frames", "max_pixels"),
    ("huge_header.npy", "mask", "max_pixels"),
    ("complex.npy", "frames", "complex"),
    ("object.npy", "frames", "object"),
    ("strings.npy", "frames", "non-numeric"),
    ("bool_image.npy", "frames", "read_mask"),
    ("four_d.npy", "frames", "got shape (2, 2, 3, 3)"),
    ("rgb.png", "frames_strict", "RGB"),
    ("rgb.png", "mask", "colour"),
    ("labels_mask.png", "mask", "allow_labels"),
    ("half_mask.npy", "mask", "non-integer"),
    ("mask_wrong_shape.png", "pair", "shape mismatch"),
    ("mask_three_frames.npy", "pair", "frame count mismatch"),
    ("unsupported.xyz", "frames", "unsupported format '.xyz'"),
    ("garbage.emd", "frames", "corrupt EMD"),
    ("garbage.ser", "frames", "TIA"),
    ("orphan.emi", "frames", "orphan_1.ser"),
    ("garbage.jpg", "frames", "JPEG"),
]


def _call(kind: str, path: Path) -> object:
    if kind == "frames":
        return read_frames(path)
    if kind == "frames_strict":
        return read_frames(path, strict_grey=True)
    if kind == "mask":
        return read_mask(path)
    if kind == "pair":
        return read_pair(CORPUS / "image_for_mask.npy", path)
    raise AssertionError(kind)


@pytest.mark.parametrize(("name", "kind", "keyword"), CORPUS_CASES, ids=lambda v: str(v))
def test_corpus_file_gives_one_line_read_error(name: str, kind: str, keyword: str) -> None:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{name} is made only where ../shared/realdata exists")
    with pytest.raises(ReadError) as info:
        _call(kind, path)
    text = _one_line(info.value)
    assert name in text
    assert keyword in text
    assert info.value.problem in text
    assert info.value.path.name in (name, "image_for_mask.npy")
    if kind == "pair":
        assert "image_for_mask.npy" in text  # both files are named


def test_every_corpus_file_has_a_case() -> None:
    covered = {name for name, _, _ in CORPUS_CASES} | {"image_for_mask.npy", "make_corpus.py"}
    present = {p.name for p in CORPUS.iterdir() if not p.name.startswith((".", "_"))}
    assert present - covered == set()
    assert sum(p.stat().st_size for p in CORPUS.iterdir() if p.is_file()) < 200_000


def test_truncated_real_dm4_is_refused(tmp_path: Path) -> None:
    real = REALDATA / "JEOL HAADF Image.dm4"
    if not real.is_file():
        pytest.skip("../shared/realdata is absent")
    cut = tmp_path / "truncated_real.dm4"
    cut.write_bytes(real.read_bytes()[:2048])
    with pytest.raises(ReadError) as err:
        read_frames(cut)
    message = str(err.value)
    assert "truncated_real.dm4" in message and "corrupt DM4" in message and "\n" not in message


def test_make_corpus_reproduces_the_committed_file_set(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.make_corpus(tmp_path, realdata=None)
    names = {p.name for p in written}
    committed = {p.name for p in CORPUS.iterdir() if p.name != "make_corpus.py"}
    assert names == committed - {"__pycache__"}
    for p in written:  # deterministic except for library version drift in container formats
        if p.suffix == ".npy" or p.stat().st_size == 0:
            assert p.read_bytes() == (CORPUS / p.name).read_bytes()


# --------------------------------------------------------------------------- formats


def test_npy_stack_and_integer_dtype(tmp_path: Path) -> None:
    arr = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    np.save(tmp_path / "s.npy", arr)
    stack = read_frames(tmp_path / "s.npy")
    assert stack.images.shape == (3, 4, 5) and stack.images.dtype == np.float32
    np.testing.assert_array_equal(stack.images, arr.astype(np.float32))
    assert stack.metadata["original_dtype"] == "uint16"
    assert stack.pixel_size_nm is None
    assert stack.n_frames == 3 and stack.frame_shape == (4, 5)


def test_npy_channel_last_colour_array_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "rgb.npy", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ReadError, match="colour"):
        read_frames(tmp_path / "rgb.npy")


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((10, 10), np.float32))
    assert read_frames(tmp_path / "a.npy", max_pixels=100).images.shape == (1, 10, 10)
    with pytest.raises(ReadError, match="max_pixels=99"):
        read_frames(tmp_path / "a.npy", max_pixels=99)
    np.save(tmp_path / "b.npy", np.zeros((5, 10, 10), np.float32))
    with pytest.raises(ReadError, match="max_total_pixels"):
        read_frames(tmp_path / "b.npy", max_total_pixels=499)


def test_tiff_multipage_stack_and_imagej_pixel_size(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).random((3, 6, 7)).astype(np.float32)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        arr,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"unit": "um"},
    )
    stack = read_frames(tmp_path / "ij.tif")
    np.testing.assert_array_equal(stack.images, arr)
    assert stack.pixel_size_nm == pytest.approx(250.0)
    assert stack.metadata["pixel_size_source"] == "imagej"


def test_tiff_resolution_tags_in_cm_and_display_dpi_ignored(tmp_path: Path) -> None:
    arr = np.zeros((4, 4), np.uint8)
    # 1e6 pixels per cm = 10 nm per pixel
    tifffile.imwrite(tmp_path / "cm.tif", arr, resolution=(1e6, 1e6), resolutionunit="CENTIMETER")
    assert read_frames(tmp_path / "cm.tif").pixel_size_nm == pytest.approx(10.0)
    tifffile.imwrite(tmp_path / "dpi.tif", arr, resolution=(72, 72), resolutionunit="INCH")
    stack = read_frames(tmp_path / "dpi.tif")
    assert stack.pixel_size_nm is None
    assert "ignored_resolution" in stack.metadata


def test_rgb_png_converted_with_note_and_equal_channels(tmp_path: Path) -> None:
    stack = read_frames(CORPUS / "rgb.png")
    assert stack.images.shape == (1, 8, 8)
    assert "luminance" in stack.metadata["colour"]
    assert stack.images[0, 0, 0] == pytest.approx(0.2125 * 200, rel=1e-5)
    grey = np.random.default_rng(1).integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "g.png")
    stack = read_frames(tmp_path / "g.png", strict_grey=True)
    np.testing.assert_array_equal(stack.images[0], grey.astype(np.float32))
    assert "equal channels" in stack.metadata["colour"]


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_tiff_rgb_contiguous_and_planar(tmp_path: Path, planar: str) -> None:
    colour = np.zeros((8, 9, 3), np.uint8)
    colour[..., 1] = 100
    data = colour if planar == "contig" else np.moveaxis(colour, -1, 0)
    tifffile.imwrite(tmp_path / "c.tif", data, photometric="rgb", planarconfig=planar)
    stack = read_frames(tmp_path / "c.tif")
    assert stack.images.shape == (1, 8, 9)
    assert stack.images[0, 0, 0] == pytest.approx(0.7154 * 100, rel=1e-5)
    with pytest.raises(ReadError, match="strict_grey"):
        read_frames(tmp_path / "c.tif", strict_grey=True)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "pipe.npy")
    with pytest.raises(ReadError, match="not a regular file"):
        read_frames(tmp_path / "pipe.npy")


def test_png_16_bit_and_jpeg(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).integers(0, 65535, (9, 8), dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_frames(tmp_path / "a.png").images[0], arr)
    Image.fromarray((arr // 256).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    stack = read_frames(tmp_path / "a.jpg")
    assert stack.images.shape == (1, 9, 8) and stack.metadata["lossy"] is True


def test_hspy_stack_in_angstrom(tmp_path: Path) -> None:
    arr = np.arange(2 * 8 * 9, dtype=np.float32).reshape(2, 8, 9)
    _write_hspy(tmp_path / "s.hspy", arr, scale=5.0, units="Å")
    stack = read_frames(tmp_path / "s.hspy")
    np.testing.assert_array_equal(stack.images, arr)
    assert stack.pixel_size_nm == pytest.approx(0.5)


def test_structured_rgb_hspy_becomes_grey(tmp_path: Path) -> None:
    rgb = np.zeros((6, 7), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 100
    _write_hspy(tmp_path / "rgb.hspy", rgb, 1.0, "nm")
    stack = read_frames(tmp_path / "rgb.hspy")
    assert stack.images.shape == (1, 6, 7)
    assert stack.images[0, 0, 0] == pytest.approx(0.7154 * 100, rel=1e-5)
    assert "RGB" in stack.metadata["colour"]


def test_ncem_emd_written_by_rosettasciio(tmp_path: Path) -> None:
    from rsciio.emd import file_writer

    arr = np.arange(6 * 7, dtype=np.float32).reshape(6, 7)
    axes = [
        {"name": n, "size": s, "scale": 0.002, "offset": 0.0, "units": "µm", "navigate": False}
        for n, s in zip("yx", arr.shape, strict=True)
    ]
    metadata = {"General": {"title": "n"}, "Signal": {"signal_type": ""}}
    file_writer(
        str(tmp_path / "n.emd"),
        {"data": arr, "axes": axes, "metadata": metadata, "original_metadata": {}},
    )
    stack = read_frames(tmp_path / "n.emd")
    np.testing.assert_array_equal(stack.images[0], arr)
    assert stack.pixel_size_nm == pytest.approx(2.0)


def test_velox_emd_picks_first_image_or_by_title(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    haadf = rng.random((1, 6, 8)).astype(np.float32)
    bf = rng.random((2, 6, 8)).astype(np.float32)
    _write_velox(tmp_path / "v.emd", [(haadf, 1.5e-9, "HAADF"), (bf, 1.5e-9, "BF")])
    first = read_frames(tmp_path / "v.emd", particles="bright")
    np.testing.assert_array_equal(first.images, haadf)
    assert first.pixel_size_nm == pytest.approx(1.5)
    assert first.metadata["image_titles"] == ["HAADF", "BF"]
    second = read_frames(tmp_path / "v.emd", signal="bf")
    np.testing.assert_array_equal(second.images, bf)
    with pytest.raises(ReadError, match="DF4"):
        read_frames(tmp_path / "v.emd", signal="DF4")
    with pytest.raises(ReadError, match="out of range"):
        read_frames(tmp_path / "v.emd", signal=5)


def test_velox_declared_size_checked_before_loading(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "big.emd", "w") as f:
        f.create_dataset("Version", data=np.array([b'{"format": "Velox", "version": "11"}']))
        # Chunked and never written: tiny on disk, 2**30 pixels per frame when loaded.
        f.create_dataset(
            "Data/Image/0/Data", shape=(2**15, 2**15, 1), dtype="f4", chunks=(64, 64, 1)
        )
    with pytest.raises(ReadError, match="max_pixels"):
        read_frames(tmp_path / "big.emd")


def test_tia_ser_and_emi(tmp_path: Path) -> None:
    image = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)
    _write_ser(tmp_path / "scan_1.ser", image, 0.75e-9)
    stack = read_frames(tmp_path / "scan_1.ser")
    np.testing.assert_array_equal(stack.images[0], image)
    assert stack.pixel_size_nm == pytest.approx(0.75)
    # Real .emi files start with a binary header; the reader skips XML found at byte 0.
    (tmp_path / "scan.emi").write_bytes(b"EMI\0<ObjectInfo><Uuid>x</Uuid></ObjectInfo>")
    via_emi = read_frames(tmp_path / "scan.emi")
    np.testing.assert_array_equal(via_emi.images, stack.images)
    # A folder lists the .emi and skips the .ser it owns.
    assert expand_inputs([tmp_path]) == [tmp_path / "scan.emi"]


def test_tia_declared_size_checked(tmp_path: Path) -> None:
    _write_ser(tmp_path / "a.ser", np.zeros((4, 4), np.float32), 1e-9)
    data = bytearray((tmp_path / "a.ser").read_bytes())
    data_offset = struct.unpack_from("<I", data, 62)[0]
    struct.pack_into("<II", data, data_offset + 42, 2**20, 2**20)
    (tmp_path / "a.ser").write_bytes(bytes(data))
    with pytest.raises(ReadError, match="max_pixels"):
        read_frames(tmp_path / "a.ser")


def test_missing_directory_and_glob_messages(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="file not found") as info:
        read_frames(tmp_path / "nope.dm4")
    assert _one_line(info.value).startswith(str(tmp_path / "nope.dm4") + ": ")
    with pytest.raises(ReadError, match="folder"):
        read_frames(tmp_path)
    with pytest.raises(ReadError, match="no file matches"):
        read_frames(tmp_path / "*.dm4")


def test_particles_argument_validated(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="'dark' or 'bright'"):
        read_frames(tmp_path / "a.npy", particles="grey")
    with pytest.raises(ValueError, match="'dark' or 'bright'"):
        to_dark_particles(np.zeros((2, 2)), "HAADF")


def test_to_dark_particles_per_frame() -> None:
    frames = np.array([[[0.0, 1.0], [2.0, 3.0]], [[10.0, 10.0], [10.0, 20.0]]], np.float32)
    dark = to_dark_particles(frames, "bright")
    np.testing.assert_array_equal(dark[0], [[3, 2], [1, 0]])
    np.testing.assert_array_equal(dark[1], [[20, 20], [20, 10]])
    assert to_dark_particles(frames, "dark") is frames
    assert to_dark_particles(frames[0], "bright").shape == (2, 2)


def test_read_error_str_attributes_and_pickle() -> None:
    err = ReadError("frames/a.dm4", "truncated or corrupt DM4 file (x\ny)")
    assert str(err) == "frames/a.dm4: truncated or corrupt DM4 file (x y)"
    assert err.path == Path("frames/a.dm4") and err.problem == "truncated or corrupt DM4 file (x y)"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.path == err.path


@pytest.mark.parametrize(
    ("unit", "nm"),
    [
        ("nm", 1.0),
        ("\u00b5m", 1e3),
        ("\u03bcm", 1e3),
        ("um", 1e3),
        ("micron", 1e3),
        ("\u00c5", 0.1),
        ("\u212b", 0.1),
        ("A", 0.1),
        ("m", 1e9),
        ("pm", 1e-3),
        ("\\u00B5m", 1e3),
        ("1/nm", None),
        ("", None),
        (None, None),
    ],
)
def test_unit_to_nm(unit: str | None, nm: float | None) -> None:
    assert unit_to_nm(unit) == nm


# --------------------------------------------------------------------------- masks and pairs


def test_masks_01_0255_bool_and_labels(tmp_path: Path) -> None:
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:3] = 1
    np.save(tmp_path / "m01.npy", m)
    Image.fromarray(m * 255).save(tmp_path / "m255.png")
    np.save(tmp_path / "mb.npy", m.astype(bool))
    for name in ("m01.npy", "m255.png", "mb.npy"):
        out = read_mask(tmp_path / name)
        assert out.dtype == bool and out.shape == (4, 5)
        np.testing.assert_array_equal(out, m.astype(bool))
    labels = read_mask(CORPUS / "labels_mask.png", allow_labels=True)
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(read_mask(tmp_path / "m255.png", allow_labels=True), m)


def test_read_pair_good(tmp_path: Path) -> None:
    np.save(tmp_path / "img.npy", np.ones((2, 4, 4), np.float32))
    np.save(tmp_path / "mask.npy", np.zeros((2, 4, 4), bool))
    stack, mask = read_pair(tmp_path / "img.npy", tmp_path / "mask.npy", particles="bright")
    assert isinstance(stack, ImageStack) and mask.shape == (2, 4, 4) and mask.dtype == bool
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "m.png")
    stack, mask = read_pair(CORPUS / "image_for_mask.npy", tmp_path / "m.png")
    assert stack.images.shape == mask.shape == (1, 16, 16)


# --------------------------------------------------------------------------- batches and inputs


def test_read_many_reports_bad_and_keeps_good(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((3, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((2, 3, 3), np.float32))
    paths = [tmp_path / "a.npy", CORPUS / "nan.npy", tmp_path / "b.npy", tmp_path / "gone.tif"]
    good, bad = read_many(paths, particles="bright")
    assert [s.path.name for s in good] == ["a.npy", "b.npy"]
    assert all(s.metadata["particles"] == "bright" for s in good)
    assert [e.path.name for e in bad] == ["nan.npy", "gone.tif"]


def test_expand_inputs(tmp_path: Path) -> None:
    for name in ("b.tif", "a.dm4", "c.txt", ".hidden.npy", "d.NPY"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    got = expand_inputs([tmp_path])
    assert got == [tmp_path / "a.dm4", tmp_path / "b.tif", tmp_path / "d.NPY"]
    got = expand_inputs([str(tmp_path / "*.t*"), tmp_path / "a.dm4", tmp_path / "missing.png"])
    assert got == [
        tmp_path / "b.tif",
        tmp_path / "c.txt",
        tmp_path / "a.dm4",
        tmp_path / "missing.png",
    ]
    assert expand_inputs([tmp_path / "a.dm4", tmp_path]) == [
        tmp_path / "a.dm4",
        tmp_path / "b.tif",
        tmp_path / "d.NPY",
    ]
    assert expand_inputs([str(tmp_path / "*.zzz")]) == [tmp_path / "*.zzz"]


# --------------------------------------------------------------------------- properties

_SHAPES = hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=12)
_FINITE = st.one_of(
    hnp.arrays(
        np.float32, _SHAPES, elements=st.floats(allow_nan=False, allow_infinity=False, width=32)
    ),
    hnp.arrays(np.float64, _SHAPES, elements=st.floats(-1e30, 1e30)),
)
_PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _save(arr: np.ndarray, folder: Path, ext: str) -> Path:
    path = folder / f"a{ext}"
    if ext == ".npy":
        np.save(path, arr)
    else:
        tifffile.imwrite(path, arr, photometric="minisblack")
    return path


@_PROPERTY
@given(arr=_FINITE, ext=st.sampled_from([".npy", ".tif"]))
def test_property_float_round_trip(arr: np.ndarray, ext: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = read_frames(_save(arr, Path(tmp), ext))
    expected = arr.astype(np.float32)
    if expected.ndim == 2:
        expected = expected[np.newaxis]
    assert stack.images.dtype == np.float32
    np.testing.assert_array_equal(stack.images, expected)


@_PROPERTY
@given(
    arr=_FINITE,
    where=st.integers(min_value=0),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    ext=st.sampled_from([".npy", ".tif"]),
)
def test_property_non_finite_refused(arr: np.ndarray, where: int, bad: float, ext: str) -> None:
    arr = arr.copy()
    arr.flat[where % arr.size] = bad
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(ReadError, match="NaN or Inf") as info:
            read_frames(_save(arr, Path(tmp), ext))
    _one_line(info.value)


_MAGICS = [
    b"",
    b"\x89HDF\r\n\x1a\n",
    b"II*\x00",
    b"MM\x00*",
    b"\x93NUMPY\x01\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"\x00\x00\x00\x04",
    b"\x00\x00\x00\x03",
    b"II\x97\x01",
]


@_PROPERTY
@given(
    magic=st.sampled_from(_MAGICS),
    payload=st.binary(max_size=2048),
    ext=st.sampled_from(SUPPORTED_EXTENSIONS),
)
def test_property_random_bytes_only_raise_read_error(
    magic: bytes, payload: bytes, ext: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"r{ext}"
        path.write_bytes(magic + payload)
        for reader in (read_frames, read_mask):
            try:
                reader(path)
            except ReadError as err:
                assert path.name in _one_line(err)


def _valid_file(folder: Path, ext: str) -> Path:
    rng = np.random.default_rng(4)
    arr = rng.random((2, 12, 10)).astype(np.float32)
    path = folder / f"v{ext}"
    if ext == ".npy":
        np.save(path, arr)
    elif ext == ".tif":
        tifffile.imwrite(path, arr, photometric="minisblack")
    elif ext == ".png":
        Image.fromarray((arr[0] * 255).astype(np.uint8)).save(path)
    elif ext == ".hspy":
        _write_hspy(path, arr, 1.0, "nm")
    elif ext == ".emd":
        _write_velox(path, [(arr, 1e-9, "HAADF")])
    elif ext == ".ser":
        _write_ser(path, arr[0], 1e-9)
    elif ext == ".dm4":
        path.write_bytes(REAL_DM4.read_bytes()[:60_000] if REAL_DM4.is_file() else b"\0\0\0\4")
    return path


@_PROPERTY
@given(
    ext=st.sampled_from([".npy", ".tif", ".png", ".hspy", ".emd", ".ser", ".dm4"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
)
def test_property_damaged_valid_files_only_raise_read_error(
    ext: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _valid_file(Path(tmp), ext)
        data = bytearray(path.read_bytes())
        for pos, value in flips:
            data[int(pos * (len(data) - 1))] = value
        path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]))
        try:
            stack = read_frames(path)
        except ReadError as err:
            assert path.name in _one_line(err)
        else:
            assert stack.images.dtype == np.float32 and np.isfinite(stack.images).all()

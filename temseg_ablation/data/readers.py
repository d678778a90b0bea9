"""Readers for users' microscope frames and masks, with one-line errors for bad files.

Every reader returns raw intensities as float32 ``(N, H, W)`` stacks (masks as bool or
int32 labels) and turns any failure of the underlying library into a :class:`ReadError`
whose message is a single line ``"<path>: <problem>"``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_TOTAL_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "ImageStack",
    "ReadError",
    "expand_inputs",
    "read_frames",
    "read_many",
    "read_mask",
    "read_pair",
    "to_dark_particles",
    "unit_to_nm",
]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".dm3",
    ".dm4",
    ".emd",
    ".ser",
    ".emi",
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
    ".npy",
    ".hspy",
)
DEFAULT_MAX_PIXELS = 2**28
# 2**31 float32 values are 8 GiB: a stack beyond that is far outside what this project processes.
DEFAULT_MAX_TOTAL_PIXELS = 2**31
PARTICLE_POLARITIES = ("dark", "bright")

# Luminance weights (ITU-R BT.709), the same ones scikit-image's rgb2gray uses.
_LUMA = np.array([0.2125, 0.7154, 0.0721])
_MAX_PROBLEM_CHARS = 300
_GLOB_CHARS = re.compile(r"[*?\[]")


class ReadError(ValueError):
    """A file that cannot be read as a frame or mask; ``str`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = _one_line(problem)
        super().__init__(f"{os.fspath(path)}: {self.problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Default exception pickling replays ``args`` (the joined message) into __init__,
        # which would break joblib/multiprocessing workers that send errors back.
        return (type(self), (os.fspath(self.path), self.problem))


@dataclass
class ImageStack:
    """Frames read from one file: float32 ``images`` (N, H, W), raw intensities."""

    images: np.ndarray
    pixel_size_nm: float | None
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(self.images.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        return int(self.images.shape[1]), int(self.images.shape[2])


@dataclass
class _Limits:
    max_pixels: int
    max_total_pixels: int
    what: str = "image"  # noun used in messages: "image" or "mask"


@dataclass
class _Raw:
    """What a format loader hands back before the common checks."""

    data: np.ndarray
    pixel_size_nm: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # True when the last axis holds colour samples (grey+alpha, RGB or RGBA).
    colour_axis: bool = False


# --------------------------------------------------------------------------- helpers


def _one_line(text: object) -> str:
    flat = " ".join(str(text).split())
    if len(flat) > _MAX_PROBLEM_CHARS:
        flat = flat[: _MAX_PROBLEM_CHARS - 3] + "..."
    return flat


def _describe(exc: BaseException) -> str:
    name = type(exc).__qualname__
    if name == "error":  # struct.error, zlib.error: the bare name says nothing
        name = f"{type(exc).__module__}.error"
    msg = _one_line(exc)
    return f"{name}: {msg}" if msg else name


_UNIT_TO_NM = {
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometers": 1e-3,
    "å": 0.1,
    "a": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "nanometres": 1.0,
    "µm": 1e3,  # micro sign U+00B5
    "μm": 1e3,  # Greek mu U+03BC
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometers": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "meters": 1e9,
    "metre": 1e9,
    "metres": 1e9,
}


def unit_to_nm(unit: str | None) -> float | None:
    """Nanometres per one ``unit`` of length (e.g. 'µm' -> 1000.0); None if not a length unit."""
    if unit is None:
        return None
    key = str(unit).strip()
    # ImageJ writes the micro sign as the escape text '\u00B5'.
    key = key.replace("\\u00B5", "µ").replace("\\u00b5", "µ").casefold()
    return _UNIT_TO_NM.get(key)


def _scale_to_nm(scale: Any, unit: Any) -> float | None:
    per_unit = unit_to_nm(unit)
    if per_unit is None:
        return None
    try:
        value = abs(float(scale)) * per_unit
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value


def _check_declared(
    path: Path,
    shape: tuple[int, ...],
    lim: _Limits,
    *,
    frame_axes: tuple[int, int] = (-2, -1),
) -> None:
    """Refuse declared sizes before anything large is allocated."""
    if len(shape) < 2:
        return  # the dimension check later gives the clearer message
    h, w = int(shape[frame_axes[0]]), int(shape[frame_axes[1]])
    if h * w > lim.max_pixels:
        raise ReadError(
            path,
            f"declared frame size {h} x {w} = {h * w} pixels exceeds max_pixels={lim.max_pixels}",
        )
    total = math.prod(int(s) for s in shape)
    if total > lim.max_total_pixels:
        raise ReadError(
            path,
            f"declared array shape {tuple(int(s) for s in shape)} holds {total} values, "
            f"more than max_total_pixels={lim.max_total_pixels}",
        )


def _shape_text(shape: tuple[int, ...]) -> str:
    return str(tuple(int(s) for s in shape))


def _check_dims(path: Path, shape: tuple[int, ...], what: str = "image") -> None:
    if len(shape) not in (2, 3):
        raise ReadError(
            path,
            f"expected a 2-D {what} or an (N, H, W) stack, got shape {_shape_text(shape)}",
        )
    if len(shape) == 3 and shape[0] == 0:
        raise ReadError(path, f"empty stack: shape {_shape_text(shape)} has no frames")
    h, w = int(shape[-2]), int(shape[-1])
    if h < 2 or w < 2:
        raise ReadError(path, f"{what} is too small: {h} x {w} pixels (need at least 2 x 2)")


def _check_channel_last(path: Path, shape: tuple[int, ...]) -> None:
    # An (H, W, 3) colour array saved as .npy would otherwise be read as H frames
    # of W x 3 pixels; such stacks never occur in real microscopy.
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] >= 16 and shape[1] >= 16:
        raise ReadError(
            path,
            f"shape {_shape_text(shape)} looks like a colour (H, W, channels) array, not an "
            "(N, H, W) stack; convert it to grey first",
        )


def _dtype_problem(dtype: np.dtype, *, for_mask: bool) -> str | None:
    if dtype.hasobject:
        return f"object dtype ({dtype}) is refused: pickled Python objects are not image data"
    if dtype.kind == "c":
        return f"complex dtype ({dtype}) is refused: expected real-valued intensities"
    if dtype.kind == "b":
        if for_mask:
            return None
        return "boolean array is a mask, not an image (read it with read_mask)"
    if dtype.kind not in "iuf":
        return f"non-numeric dtype ({dtype}) is refused"
    return None


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect tifffile's logged errors: it logs (not raises) many truncation problems."""
    records: list[str] = []
    me = threading.get_ident()

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == me and record.levelno >= logging.ERROR:
                records.append(record.getMessage())

    handler = _Collect(level=logging.ERROR)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------- loaders


def _load_npy(path: Path, lim: _Limits) -> _Raw:
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(fh)
            else:
                raise ReadError(path, f"unsupported NPY format version {version[0]}.{version[1]}")
            data_start = fh.tell()
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(path, f"not a valid NPY file ({_describe(exc)})") from exc

    problem = _dtype_problem(dtype, for_mask=True)
    if problem:
        raise ReadError(path, problem)
    _check_dims(path, shape, what=lim.what)
    _check_declared(path, shape, lim)
    _check_channel_last(path, shape)
    expected = math.prod(shape) * dtype.itemsize
    available = path.stat().st_size - data_start
    if available < expected:
        raise ReadError(
            path,
            f"truncated NPY file: header declares {expected} bytes of data, file holds {available}",
        )
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ReadError(path, f"truncated or corrupt NPY file ({_describe(exc)})") from exc
    return _Raw(np.asarray(data), None, {"format": "npy"})


def _tiff_pixel_size(tif: Any, page: Any) -> tuple[float | None, str | None, dict[str, Any]]:
    """Pixel size in nm from ImageJ, FEI or resolution tags; (size, source, notes)."""
    import tifffile

    notes: dict[str, Any] = {}
    try:
        xres = float(page.resolution[0])
    except Exception:
        xres = 0.0
    ij = tif.imagej_metadata if tif.is_imagej else None
    if ij and ij.get("unit") and xres > 0:
        size = _scale_to_nm(1.0 / xres, ij["unit"])
        if size is not None:
            notes["units"] = str(ij["unit"])
            return size, "imagej", notes
    fei = getattr(tif, "fei_metadata", None) if getattr(tif, "is_fei", False) else None
    if fei:
        with contextlib.suppress(Exception):
            size = _scale_to_nm(fei["Scan"]["PixelWidth"], "m")
            if size is not None:
                notes["units"] = "m"
                return size, "fei", notes
    unit_len = {
        tifffile.RESUNIT.INCH: 2.54e7,
        tifffile.RESUNIT.CENTIMETER: 1e7,
        tifffile.RESUNIT.MILLIMETER: 1e6,
        tifffile.RESUNIT.MICROMETER: 1e3,
    }
    try:
        per_unit = unit_len.get(page.resolutionunit)
    except Exception:
        per_unit = None
    if per_unit is not None and xres > 0:
        size = per_unit / xres
        # 72/96/300 dpi defaults from image editors give 85-350 um "pixels": not a calibration.
        if size <= 1e4:
            return size, "resolution tags", notes
        notes["ignored_resolution"] = f"{size:.4g} nm/px from resolution tags (display default?)"
    return None, None, notes


def _load_tiff(path: Path, lim: _Limits) -> _Raw:
    import tifffile

    try:
        with _tifffile_errors() as logged, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ReadError(path, "TIFF file holds no image data")
            series = tif.series[0]
            shape, axes = tuple(series.shape), str(series.axes)
            # Planar colour files put the sample axis first ('SYX'); move it last.
            sample_axis = axes.find("S")
            if sample_axis >= 0:
                order = [i for i in range(len(shape)) if i != sample_axis] + [sample_axis]
                shape = tuple(shape[i] for i in order)
                axes = "".join(axes[i] for i in order)
            colour = axes.endswith("S") and shape[-1] in (2, 3, 4)
            frame_shape = shape[:-1] if axes.endswith("S") and shape[-1] in (1, 2, 3, 4) else shape
            _check_declared(path, frame_shape, lim)
            data = series.asarray()
            if sample_axis >= 0:
                data = np.moveaxis(data, sample_axis, -1)
            if logged:
                raise ReadError(path, f"truncated or corrupt TIFF file (tifffile: {logged[0]})")
            pixel, source, notes = _tiff_pixel_size(tif, series.pages[0] or tif.pages[0])
            n_series = len(tif.series)
    except ReadError:
        raise
    except MemoryError as exc:
        raise ReadError(path, "TIFF declares an image too large to load (MemoryError)") from exc
    except Exception as exc:
        raise ReadError(path, f"truncated or corrupt TIFF file ({_describe(exc)})") from exc
    if axes.endswith("S") and data.shape[-1] == 1:
        data = data[..., 0]
    # Leading singleton axes (ImageJ T/Z/C of size 1) carry no frames.
    lead = data.shape[:-3] if colour else data.shape[:-2]
    if lead and all(s == 1 for s in lead):
        data = data.reshape(data.shape[len(lead) :])
    meta: dict[str, Any] = {"format": "tiff", "tiff_axes": axes, **notes}
    if source:
        meta["pixel_size_source"] = source
    if n_series > 1:
        meta["tiff_series_ignored"] = n_series - 1
    return _Raw(data, pixel, meta, colour_axis=colour)


def _load_pil(path: Path, lim: _Limits) -> _Raw:
    from PIL import Image

    ext = path.suffix.lower()
    try:
        with Image.open(path) as im:
            w, h = im.size
            _check_declared(path, (h, w), lim)
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "RGB", "RGBA"):
                im = im.convert("RGB")
            data = np.asarray(im)
            n_frames = int(getattr(im, "n_frames", 1))
    except ReadError:
        raise
    except (MemoryError, Image.DecompressionBombError) as exc:
        raise ReadError(
            path, f"image declares a size too large to load ({_describe(exc)})"
        ) from exc
    except Exception as exc:
        kind = "PNG" if ext == ".png" else "JPEG"
        raise ReadError(path, f"truncated or corrupt {kind} file ({_describe(exc)})") from exc
    meta: dict[str, Any] = {"format": "png" if ext == ".png" else "jpeg", "pil_mode": mode}
    if ext in (".jpg", ".jpeg"):
        meta["lossy"] = True
    if n_frames > 1:
        meta["frames_ignored"] = n_frames - 1
    return _Raw(data, None, meta, colour_axis=data.ndim == 3)


def _hdf5_precheck(path: Path, lim: _Limits, kind: str) -> None:
    """Check image dataset shapes with h5py before rosettasciio loads them eagerly."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            found: list[tuple[str, tuple[int, ...]]] = []

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
                    base = name.rsplit("/", 1)[-1]
                    if base.lower() == "data" and "spectrum" not in name.lower():
                        found.append((name, tuple(obj.shape)))

            f.visititems(visit)
    except Exception as exc:
        label = "HyperSpy" if kind == "hspy" else "EMD"
        raise ReadError(
            path, f"truncated or corrupt {label} (HDF5) file ({_describe(exc)})"
        ) from exc
    for name, shape in found:
        # Velox stores image stacks as (H, W, N); HyperSpy and NCEM as (..., H, W).
        axes = (0, 1) if name.startswith("Data/Image/") else (-2, -1)
        _check_declared(path, shape, lim, frame_axes=axes)


def _ser_precheck(path: Path, lim: _Limits) -> None:
    """Parse the fixed part of a TIA .ser header to refuse bad or huge files cheaply."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(30)
            if len(head) < 30:
                raise ReadError(path, "truncated or corrupt TIA .ser file (header too short)")
            order, series_id, version = struct.unpack_from("<3H", head, 0)
            if order != 0x4949 or series_id != 0x0197:
                raise ReadError(path, "not a TIA .ser file (bad header magic)")
            data_type_id, _tag, _total, valid = struct.unpack_from("<4I", head, 6)
            if version <= 0x210:
                (offset_array,) = struct.unpack_from("<I", head, 22)
                fh.seek(offset_array)
                raw = fh.read(4)
                first = struct.unpack("<I", raw)[0] if len(raw) == 4 else None
            else:
                fh.seek(22)
                (offset_array,) = struct.unpack("<Q", fh.read(8))
                fh.seek(offset_array)
                raw = fh.read(8)
                first = struct.unpack("<Q", raw)[0] if len(raw) == 8 else None
            if first is None:
                raise ReadError(path, "truncated or corrupt TIA .ser file (offset table missing)")
            if data_type_id == 0x4122 and valid > 0:  # image elements
                fh.seek(first + 42)
                raw = fh.read(8)
                if len(raw) < 8:
                    raise ReadError(path, "truncated or corrupt TIA .ser file (element header)")
                size_x, size_y = struct.unpack("<2I", raw)
                _check_declared(path, (valid, size_y, size_x), lim)
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(path, f"truncated or corrupt TIA .ser file ({_describe(exc)})") from exc


def _dm_precheck(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4 or struct.unpack(">I", head)[0] not in (3, 4):
        raise ReadError(path, "not a DigitalMicrograph file (bad header: version is not 3 or 4)")


def _rsciio_dicts(path: Path, ext: str, lim: _Limits) -> list[dict[str, Any]]:
    label = {
        ".dm3": "DM3",
        ".dm4": "DM4",
        ".emd": "EMD",
        ".ser": "TIA",
        ".emi": "TIA",
        ".hspy": "HyperSpy",
    }[ext]
    try:
        if ext in (".dm3", ".dm4"):
            from rsciio.digitalmicrograph import file_reader

            _dm_precheck(path)
            try:
                # Lazy reading parses only the tags, so declared shapes can be checked
                # before any pixel data is allocated.
                dicts = file_reader(str(path), lazy=True)
            except Exception:
                dicts = None  # e.g. RGBA DM images cannot be read lazily
            if dicts is not None:
                for d in dicts:
                    _check_declared(path, tuple(d["data"].shape), lim)
                for d in dicts:
                    d["data"] = np.asarray(d["data"])
            else:
                dicts = file_reader(str(path))
        elif ext == ".emd":
            from rsciio.emd import file_reader

            _hdf5_precheck(path, lim, "emd")
            dicts = file_reader(str(path), select_type="images")
        elif ext == ".hspy":
            from rsciio.hspy import file_reader

            _hdf5_precheck(path, lim, "hspy")
            dicts = file_reader(str(path))
        else:
            from rsciio.tia import file_reader

            if ext == ".ser":
                _ser_precheck(path, lim)
            else:
                stem = str(path.with_suffix(""))
                sers = sorted(glob.glob(glob.escape(stem) + "_[0-9].ser"))
                if not sers:
                    raise ReadError(
                        path,
                        f"no TIA data files next to this .emi (expected {Path(stem).name}_1.ser)",
                    )
                for ser in sers:
                    _ser_precheck(Path(ser), lim)
            dicts = file_reader(str(path))
    except ReadError:
        raise
    except MemoryError as exc:
        raise ReadError(
            path, f"{label} file declares an image too large to load (MemoryError)"
        ) from exc
    except ModuleNotFoundError as exc:
        raise ReadError(
            path,
            f"reading this {label} file needs the missing package '{exc.name}' "
            "(Velox files with EDS spectrum images need 'sparse')",
        ) from exc
    except Exception as exc:
        raise ReadError(path, f"truncated or corrupt {label} file ({_describe(exc)})") from exc
    return list(dicts or [])


def _signal_axes(d: dict[str, Any]) -> list[dict[str, Any]]:
    axes = list(d.get("axes") or [])
    if axes and all("index_in_array" in a for a in axes):
        axes.sort(key=lambda a: int(a["index_in_array"]))
    return axes


def _is_image_dict(d: dict[str, Any]) -> bool:
    shape = tuple(getattr(d.get("data"), "shape", ()))
    if len(shape) not in (2, 3):
        return False
    n_signal = sum(1 for a in d.get("axes") or [] if not a.get("navigate", False))
    return n_signal != 1  # one signal axis means spectra (e.g. an EELS spectrum image)


def _title(d: dict[str, Any]) -> str:
    general = (d.get("metadata") or {}).get("General") or {}
    return str(general.get("title") or "")


def _load_rsciio(path: Path, ext: str, lim: _Limits, signal: int | str | None) -> _Raw:
    dicts = _rsciio_dicts(path, ext, lim)
    images = [d for d in dicts if _is_image_dict(d)]
    if not images:
        found = ", ".join(_shape_text(tuple(np.shape(d.get("data")))) for d in dicts) or "nothing"
        raise ReadError(path, f"no 2-D image or image stack in this file (found: {found})")
    titles = [_title(d) for d in images]
    if signal is None:
        chosen = 0
    elif isinstance(signal, int):
        if not 0 <= signal < len(images):
            raise ReadError(path, f"signal={signal} out of range: file holds {len(images)} images")
        chosen = signal
    else:
        hits = [i for i, t in enumerate(titles) if str(signal).casefold() in t.casefold()]
        if not hits:
            raise ReadError(path, f"no image titled like {signal!r} (titles: {titles})")
        chosen = hits[0]
    d = images[chosen]
    data = np.asarray(d["data"])
    colour = False
    names = data.dtype.names or ()
    if {"R", "G", "B"} <= set(names):
        # DM and HyperSpy RGB(A) images come as structured arrays with one field per channel.
        fields = ["R", "G", "B"] + (["A"] if "A" in names else [])
        data = np.stack([data[f] for f in fields], axis=-1)
        colour = True
    axes = _signal_axes(d)
    pixel = None
    meta: dict[str, Any] = {"format": ext.lstrip(".")}
    if len(axes) >= 2:
        y_ax, x_ax = axes[-2], axes[-1]
        pixel = _scale_to_nm(x_ax.get("scale"), x_ax.get("units"))
        units = x_ax.get("units")
        meta["units"] = None if units is None else str(units)
        with contextlib.suppress(TypeError, ValueError):
            meta["scale"] = float(x_ax.get("scale", 1.0))
        pixel_y = _scale_to_nm(y_ax.get("scale"), y_ax.get("units"))
        if (
            pixel is not None
            and pixel_y is not None
            and not math.isclose(pixel, pixel_y, rel_tol=1e-6)
        ):
            meta["pixel_size_y_nm"] = pixel_y
        if pixel is not None:
            meta["pixel_size_source"] = "axes calibration"
    md = d.get("metadata") or {}
    signal_type = (md.get("Signal") or {}).get("signal_type")
    if signal_type:
        meta["signal_type"] = str(signal_type)
    if titles[chosen]:
        meta["title"] = titles[chosen]
    mode = ((md.get("Acquisition_instrument") or {}).get("TEM") or {}).get("acquisition_mode")
    if mode:
        meta["acquisition_mode"] = str(mode)
    if len(images) > 1:
        meta["image_titles"] = titles
        meta["image_index"] = chosen
    return _Raw(data, pixel, meta, colour_axis=colour)


def _check_path(path: str | os.PathLike[str]) -> tuple[Path, str]:
    p = Path(path)
    if not p.exists():
        if _GLOB_CHARS.search(os.fspath(p)):
            raise ReadError(p, "no file matches this pattern")
        raise ReadError(p, "file not found")
    if p.is_dir():
        raise ReadError(p, "is a folder, not a file (use expand_inputs to list its frames)")
    if not p.is_file():
        # FIFOs and devices would block or stream forever.
        raise ReadError(p, "not a regular file")
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        shown = ext or "(none)"
        raise ReadError(
            p,
            f"unsupported format '{shown}' (supported: {', '.join(SUPPORTED_EXTENSIONS)})",
        )
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ReadError(p, f"cannot access file ({_describe(exc)})") from exc
    if size == 0:
        raise ReadError(p, "empty file (0 bytes)")
    if not os.access(p, os.R_OK):
        raise ReadError(p, "file is not readable (permission denied)")
    return p, ext


def _load_any(path: Path, ext: str, lim: _Limits, signal: int | str | None) -> _Raw:
    if ext == ".npy":
        return _load_npy(path, lim)
    if ext in (".tif", ".tiff"):
        return _load_tiff(path, lim)
    if ext in (".png", ".jpg", ".jpeg"):
        return _load_pil(path, lim)
    return _load_rsciio(path, ext, lim, signal)


def _check_dtype(path: Path, data: np.ndarray, *, for_mask: bool) -> None:
    problem = _dtype_problem(data.dtype, for_mask=for_mask)
    if problem:
        raise ReadError(path, problem)


def _colour_to_grey(
    path: Path, data: np.ndarray, strict_grey: bool, meta: dict[str, Any]
) -> np.ndarray:
    channels = data.shape[-1]
    _check_dtype(path, data, for_mask=False)
    colour = data[..., :3] if channels >= 3 else data[..., :1]
    names = {2: "grey+alpha", 3: "RGB", 4: "RGBA"}[channels]
    if channels in (2, 4):
        meta["alpha_dropped"] = True
    if channels == 2 or bool(np.all(colour == colour[..., :1])):
        meta["colour"] = f"{names} with equal channels: used one channel as grey"
        return colour[..., 0]
    if strict_grey:
        raise ReadError(path, f"colour ({names}) image refused because strict_grey=True")
    meta["colour"] = f"{names} converted to grey by luminance 0.2125 R + 0.7154 G + 0.0721 B"
    return np.tensordot(colour.astype(np.float64), _LUMA, axes=([-1], [0]))


def _finite_or_raise(path: Path, data: np.ndarray, what: str = "image") -> None:
    if data.dtype.kind != "f":
        return
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise ReadError(path, f"{what} contains NaN or Inf ({n_nan} NaN, {n_inf} Inf values)")


def _validate_particles(particles: str) -> str:
    if particles not in PARTICLE_POLARITIES:
        raise ValueError(f"particles must be 'dark' or 'bright', got {particles!r}")
    return particles


# --------------------------------------------------------------------------- public API


def read_frames(
    path: str | os.PathLike[str],
    *,
    particles: str = "dark",
    strict_grey: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS,
    signal: int | str | None = None,
) -> ImageStack:
    """Read one file as raw float32 frames (N, H, W); ``particles`` is only recorded.

    ``signal`` picks an image (index, or part of its title) in files that hold several
    (Velox EMD, DM, TIA); the default is the first image. Colour PNG/JPEG/TIFF frames are
    converted to grey (noted in ``metadata['colour']``) unless ``strict_grey`` is set.
    """
    _validate_particles(particles)
    lim = _Limits(int(max_pixels), int(max_total_pixels))
    p, ext = _check_path(path)
    raw = _load_any(p, ext, lim, signal)
    data = raw.data
    meta = dict(raw.metadata)
    meta["original_dtype"] = str(data.dtype)
    if raw.colour_axis:
        data = _colour_to_grey(p, data, strict_grey, meta)
    _check_dtype(p, data, for_mask=False)
    _check_dims(p, data.shape)
    _check_declared(p, data.shape, lim)
    _finite_or_raise(p, data)
    with np.errstate(over="ignore"):
        images = data.astype(np.float32)
    if images.ndim == 2:
        images = images[np.newaxis]
    if data.dtype.kind == "f" and not np.isfinite(images).all():
        peak = float(np.max(np.abs(data)))
        raise ReadError(p, f"values exceed the float32 range (max |value| = {peak:.3g})")
    meta["particles"] = particles
    meta["n_frames"] = int(images.shape[0])
    return ImageStack(
        images=np.ascontiguousarray(images),
        pixel_size_nm=raw.pixel_size_nm,
        path=p,
        metadata=meta,
    )


def to_dark_particles(images: np.ndarray, particles: str) -> np.ndarray:
    """Return (N, H, W) or (H, W) frames with dark particles; 'bright' frames are flipped per frame.

    Flipping maps each frame's intensity x to min + max - x, so every frame keeps its range.
    """
    _validate_particles(particles)
    arr = np.asarray(images)
    if particles == "dark":
        return arr
    work = arr.astype(np.float32, copy=False)
    axes = (-2, -1)
    lo = work.min(axis=axes, keepdims=True)
    hi = work.max(axis=axes, keepdims=True)
    return (lo + hi - work).astype(np.float32)


def read_mask(
    path: str | os.PathLike[str],
    *,
    allow_labels: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS,
) -> np.ndarray:
    """Read a mask: bool (H, W) or (N, H, W) from 0/1, 0/255 or bool values.

    With ``allow_labels`` the result is always int32 instance labels (0 = background;
    a 0/255 mask becomes 0/1).
    """
    lim = _Limits(int(max_pixels), int(max_total_pixels), what="mask")
    p, ext = _check_path(path)
    raw = _load_any(p, ext, lim, None)
    data = raw.data
    if raw.colour_axis:
        colour = data[..., :3] if data.shape[-1] >= 3 else data[..., :1]
        if not bool(np.all(colour == colour[..., :1])):
            raise ReadError(p, "colour mask refused: channels differ (expected a grey mask)")
        data = colour[..., 0]
    _check_dtype(p, data, for_mask=True)
    _check_dims(p, data.shape, what="mask")
    if data.dtype.kind == "b":
        return data.astype(np.int32) if allow_labels else data.astype(bool)
    _finite_or_raise(p, data, what="mask")
    values = np.unique(data)
    if data.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise ReadError(p, "mask holds non-integer values (expected 0/1, 0/255 or labels)")
    if values.size and values[0] < 0:
        raise ReadError(p, f"mask holds negative values (min {values[0]})")
    binary_01 = set(values.tolist()) <= {0, 1}
    binary_0255 = set(values.tolist()) <= {0, 255}
    if allow_labels:
        if values.size and values[-1] > np.iinfo(np.int32).max:
            raise ReadError(p, f"label {values[-1]} does not fit in int32")
        if binary_0255 and not binary_01:
            return (data == 255).astype(np.int32)
        return data.astype(np.int32)
    if binary_01:
        return data == 1
    if binary_0255:
        return data == 255
    shown = values[:6].tolist()
    more = ", ..." if values.size > 6 else ""
    raise ReadError(
        p,
        f"mask has {values.size} distinct values {shown}{more}; expected 0/1, 0/255 or bool "
        "(pass allow_labels=True for instance labels)",
    )


def read_pair(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    particles: str = "dark",
    *,
    allow_labels: bool = False,
    **kw: Any,
) -> tuple[ImageStack, np.ndarray]:
    """Read an image file and its mask; the mask comes back as (N, H, W) matching the frames."""
    stack = read_frames(image_path, particles=particles, **kw)
    limits = {k: kw[k] for k in ("max_pixels", "max_total_pixels") if k in kw}
    mask = read_mask(mask_path, allow_labels=allow_labels, **limits)
    mask3 = mask[np.newaxis] if mask.ndim == 2 else mask
    if mask3.shape != stack.images.shape:
        n_i, n_m = stack.images.shape[0], mask3.shape[0]
        what = (
            "frame count" if n_i != n_m and mask3.shape[1:] == stack.images.shape[1:] else "shape"
        )
        raise ReadError(
            image_path,
            f"image/mask {what} mismatch with {os.fspath(mask_path)}: image frames "
            f"{_shape_text(stack.images.shape)} vs mask {_shape_text(mask3.shape)}",
        )
    return stack, mask3


def read_many(
    paths: Iterable[str | os.PathLike[str]], **kw: Any
) -> tuple[list[ImageStack], list[ReadError]]:
    """Read every path with :func:`read_frames`; bad files are collected, not raised."""
    good: list[ImageStack] = []
    bad: list[ReadError] = []
    for path in paths:
        try:
            good.append(read_frames(path, **kw))
        except ReadError as err:
            bad.append(err)
    return good, bad


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in SUPPORTED_EXTENSIONS
    )
    # A TIA .emi reads its own <stem>_<n>.ser files; listing both would read them twice.
    emi_stems = {f.with_suffix("").name for f in files if f.suffix.lower() == ".emi"}
    keep = []
    for f in files:
        if f.suffix.lower() == ".ser":
            m = re.fullmatch(r"(.+)_\d+", f.with_suffix("").name)
            if m and m.group(1) in emi_stems:
                continue
        keep.append(f)
    return keep


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, glob patterns and folders (sorted; folders keep supported extensions only).

    Paths that do not exist (and patterns that match nothing) are kept as given so that
    reading them reports the problem.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for item in items:
        p = Path(item)
        text = os.fspath(item)
        if p.is_dir():
            for f in _folder_files(p):
                add(f)
        elif p.exists():
            add(p)
        elif _GLOB_CHARS.search(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            files = [m for m in matches if m.is_file()]
            for m in files:
                add(m)
            if not files:
                add(p)
        else:
            add(p)
    return out

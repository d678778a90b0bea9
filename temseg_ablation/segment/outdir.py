"""The segment command's output folder: up-front checks, atomic writes and a resumable manifest.

Every per-frame result is written as soon as the frame is done: its mask, instance-label TIFF
(and probability map, ImageJ ROI set, HyperSpy signal) by write-then-rename, its rows appended
to ``frames.csv`` / ``particles.csv`` in one write, and then ``manifest.json`` (atomically)
records the frame as done.
A crash therefore keeps every finished frame; rows of a frame the manifest does not list (a crash
between the append and the manifest update) are dropped when the folder is opened again. A folder
written by an older manifest version (other table columns) is refused unless ``overwrite``.

A rerun into the same folder continues (frames already done are skipped) when its options hash
equals the manifest's, and is refused otherwise unless ``overwrite`` is set, which first
removes the outputs this command writes (and nothing else in the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.writers import (  # re-exported for segment
    atomic_write,
    write_hspy,
    write_image,
    write_labels,
    write_rois,
)

__all__ = [
    "MANIFEST",
    "OUTPUT_FILES",
    "OutputError",
    "OutputStore",
    "atomic_write",
    "check_out_dir",
    "write_hspy",
    "write_image",
    "write_labels",
    "write_rois",
]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: the ParticleSpy-parity particle columns and labels/
#: Files (and folders) this command writes; ``--overwrite`` removes exactly these.
OUTPUT_FILES = ("frames.csv", "particles.csv", "summary.json", "failed.txt", "coarsening.csv",
                "coarsening.png", "events.csv", "size_distribution.png", MANIFEST)
OUTPUT_DIRS = ("masks", "labels", "prob", "rois", "hspy")
#: The suffix of a frame's file in each per-frame folder but masks/ (its stem is the mask's).
FRAME_FILES = {"labels": ".tif", "prob": ".tif", "rois": ".zip", "hspy": ".hspy"}
#: Per-frame folders written only with an option (``SegmentOptions`` field -> folder).
OPTIONAL_DIRS = {"save_prob": "prob", "rois": "rois", "hspy": "hspy"}


class OutputError(ValueError):
    """An output folder that cannot be used; ``str`` is one line."""


def check_out_dir(out: Path) -> Path:
    """``out`` made absolute after checking it is (or can become) a writable folder.

    Raises ``OutputError`` (one line) when ``out`` is a file, lies under a file, or its nearest
    existing folder is not writable. Nothing is created.
    """
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"--out {out}: {probe} is a file, not a folder")
    # os.access is not enough (root, read-only mounts): try to create a file there
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".temseg-write-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise OutputError(f"--out {out}: cannot write in {probe} ({err.strerror or err})") from None
    return out


def _frame_key(source: str, frame_in_source: int) -> str:
    return f"{source}#{int(frame_in_source)}"


@dataclass
class OutputStore:
    """The output folder of one run: which frames are done, and the incremental tables."""

    out: Path
    options_hash: str
    options: dict[str, Any]
    frame_columns: list[str]
    particle_columns: list[str]
    frames_done: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: bool = False
    _fresh: bool = True

    @classmethod
    def open(cls, out: Path, options_hash: str, options: dict[str, Any], *, overwrite: bool,
             frame_columns: list[str], particle_columns: list[str]) -> OutputStore:
        """Decide whether ``out`` continues, starts over or is refused; changes nothing on disk."""
        store = cls(out, options_hash, options, list(frame_columns), list(particle_columns))
        manifest = out / MANIFEST
        ours = [n for n in OUTPUT_FILES if (out / n).exists()] + \
               [n for n in OUTPUT_DIRS if (out / n).is_dir() and any((out / n).iterdir())]
        if overwrite or not ours:
            return store
        if not manifest.is_file():
            raise OutputError(f"--out {out}: holds results without a {MANIFEST} ({', '.join(ours)}); "
                              "use --overwrite to replace them or choose another folder")
        try:
            data = json.loads(manifest.read_text())
            version = data.get("version")
            same = version == MANIFEST_VERSION and data.get("options_hash") == options_hash
        except (OSError, ValueError, AttributeError):
            raise OutputError(f"--out {out}: {MANIFEST} is unreadable; use --overwrite") from None
        if version != MANIFEST_VERSION:  # other table columns: appending would misalign them
            raise OutputError(f"--out {out}: holds results of an older version of this command "
                              f"(manifest version {version}, now {MANIFEST_VERSION}); use "
                              "--overwrite to replace them or choose another folder")
        if not same:
            raise OutputError(f"--out {out}: holds results made with other options; use --overwrite "
                              "to replace them, the same options to continue, or another folder")
        store.frames_done = dict(data.get("frames") or {})
        store.sources = dict(data.get("sources") or {})
        store.resumed, store._fresh = True, False
        return store

    # ---------------------------------------------------------------------------------- setup

    def begin(self) -> None:
        """Create the folder; remove old outputs (overwrite) or drop rows of unfinished frames."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self._fresh:
            for name in OUTPUT_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (self.out / name).unlink()
            for name in OUTPUT_DIRS:
                folder = self.out / name
                if folder.is_dir():
                    for f in folder.iterdir():
                        if f.is_file():
                            f.unlink()
        else:
            # summary.json would describe the previous run until this one ends
            with contextlib.suppress(FileNotFoundError):
                (self.out / "summary.json").unlink()
            self._reconcile()
        (self.out / "masks").mkdir(exist_ok=True)
        (self.out / "labels").mkdir(exist_ok=True)
        for option, folder in OPTIONAL_DIRS.items():
            if self.options.get(option):
                (self.out / folder).mkdir(exist_ok=True)
        self._write_manifest()

    def _reconcile(self) -> None:
        """Keep only the CSV rows of frames the manifest lists as done (in their own columns)."""
        done = {int(r["frame"]) for r in self.frames_done.values()}
        for name, columns in (("frames.csv", self.frame_columns),
                              ("particles.csv", self.particle_columns)):
            table = self.read_table(name, columns)
            table = table.loc[table["frame"].isin(done)] if len(table) else table
            atomic_write(self.out / name, lambda tmp, t=table: t.to_csv(tmp, index=False))

    def read_table(self, name: str, columns: list[str]) -> pd.DataFrame:
        """One of the incremental tables with ``columns`` (empty when absent or empty)."""
        path = self.out / name
        if not path.is_file() or path.stat().st_size == 0:
            return pd.DataFrame(columns=columns)
        raw = path.read_bytes()
        if not raw.endswith(b"\n"):  # a crash in the middle of an append: drop the partial row
            raw = raw[:raw.rfind(b"\n") + 1]
            path.write_bytes(raw)
        table = pd.read_csv(path)
        for c in columns:
            if c not in table.columns:
                table[c] = np.nan
        return table[columns]

    # ------------------------------------------------------------------------------ per frame

    def is_done(self, source: str, frame_in_source: int) -> bool:
        """Whether that frame's results are already in the folder."""
        return _frame_key(source, frame_in_source) in self.frames_done

    def source_done(self, source: str) -> bool:
        """Whether every frame of ``source`` is done (so it need not be read again)."""
        info = self.sources.get(source)
        return bool(info) and all(self.is_done(source, k) for k in range(int(info["n_frames"])))

    def stem_for(self, source: str, stem: str, n_frames: int) -> str:
        """A file stem for ``source``'s outputs, the same across reruns and unique in the folder."""
        if source in self.sources:
            return str(self.sources[source]["stem"])
        used = {str(v["stem"]) for v in self.sources.values()}
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        self.sources[source] = {"stem": name, "n_frames": int(n_frames)}
        return name

    def next_frame_index(self) -> int:
        """Index of the next frame added to the tables."""
        return 1 + max((int(r["frame"]) for r in self.frames_done.values()), default=-1)

    def add_frame(self, source: str, frame_row: dict[str, Any], particles: pd.DataFrame) -> None:
        """Append one finished frame's rows, then record it as done in the manifest."""
        self._append("frames.csv", pd.DataFrame([frame_row], columns=self.frame_columns))
        self._append("particles.csv", particles.reindex(columns=self.particle_columns))
        self.frames_done[_frame_key(source, frame_row["frame_in_source"])] = {
            "frame": int(frame_row["frame"]), "mask": frame_row["mask"]}
        self._write_manifest()

    def _append(self, name: str, table: pd.DataFrame) -> None:
        path = self.out / name
        header = not path.is_file() or path.stat().st_size == 0
        text = table.to_csv(index=False, header=header)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)  # one write per frame: a crash leaves at most a partial last row
            fh.flush()
            os.fsync(fh.fileno())

    def _write_manifest(self) -> None:
        data = {"version": MANIFEST_VERSION, "options_hash": self.options_hash,
                "options": self.options, "sources": self.sources, "frames": self.frames_done}
        text = json.dumps(data, indent=1, default=str)
        atomic_write(self.out / MANIFEST, lambda tmp: Path(tmp).write_text(text))

    # --------------------------------------------------------------------------------- finish

    def remove_orphans(self) -> list[str]:
        """Delete the per-frame files (masks, labels, ...) of frames not done (a crash's leftovers)."""
        keep = {Path(r["mask"]).name for r in self.frames_done.values()}
        stems = {Path(n).stem for n in keep}
        removed = []
        for name in OUTPUT_DIRS:
            names = keep if name == "masks" else {s + FRAME_FILES[name] for s in stems}
            folder = self.out / name
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.is_file() and f.name not in names:
                    f.unlink()
                    removed.append(f"{name}/{f.name}")
        return removed

    def write_text(self, name: str, text: str | None) -> None:
        """Write (atomically) or, with ``text`` None, remove a file of the folder."""
        path = self.out / name
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def write_csv(self, name: str, table: pd.DataFrame) -> None:
        """Replace a table of the folder atomically."""
        atomic_write(self.out / name, lambda tmp: table.to_csv(tmp, index=False))

"""Check that the MLflow UI shows a store's runs, and save a screenshot of it (``make ui-check``).

Starts ``mlflow server`` on 127.0.0.1 over a copy of the store's database, opens the
experiment's run table in headless Chromium, saves a PNG and checks it is not blank; it also
dumps the rendered page and checks that every job run's name is on it.

The copy carries one extra experiment tag, a shared view of the run table (job runs only,
sorted by validation F1, with the variant / seed / F1 columns), which is how the UI shares
views between users; the original store is never written to. The page is opened under a
host name other than localhost so the UI leaves its local-only assistant panel closed.

    python scripts/ui_check.py [--store mlruns] [--out docs/img/mlflow_ui.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST_ALIAS = "temseg-mlflow"
VIEW_KEY = "temseg-ui-check"
COLUMNS = ("params.`variant`", "params.`seed`", "metrics.`final/val/f1_otsu`",
           "metrics.`final/heldout/f1_otsu`", "metrics.`final/gap/f1_otsu`",
           "metrics.`final/val/edge_uncertainty`", "metrics.`final/val/particle_det_f1`")
#: Column widths in px chosen so that all columns fit a 1600 px wide window.
COLUMN_WIDTHS = dict(zip(COLUMNS, (150, 55, 130, 130, 130, 130, 130), strict=True))
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1600,1000", "--virtual-time-budget=15000")


class UICheckError(RuntimeError):
    """The UI check failed; ``str`` is one line saying what and where."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(name: str | None = None) -> str:
    """Path of a Chromium / Chrome executable, or a one-line error saying how to get one."""
    for cand in ([name] if name else ["chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(cand)
        if path:
            return path
    raise UICheckError(f"no {name or 'chromium'} executable on PATH; install it "
                       "(Debian: apt-get install -y chromium) or pass --chromium PATH")


def copy_store(db: Path, dest: Path) -> Path:
    """Consistent copy of a sqlite tracking database (safe while a sweep is writing to it)."""
    if not db.is_file():
        raise UICheckError(f"{db}: no MLflow tracking database; run a sweep first "
                           "(e.g. python -m temseg_ablation -m model=norm,twoconv_norm) or pass --store")
    out = dest / "mlflow.db"
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(out)
        with dst:
            src.backup(dst)
        dst.close()
    finally:
        src.close()
    return out


def add_shared_view(tracking_uri: str, experiment: str) -> tuple[str, int]:
    """Tag the (copied) experiment with a shared run-table view; returns (experiment id, job runs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments(max_results=20)) or "none"
        raise UICheckError(f"{tracking_uri}: no experiment {experiment!r} (have: {names})")
    jobs = client.search_runs([exp.experiment_id], "tags.`temseg.kind` = 'job'", max_results=500)
    state = {"searchFilter": "tags.`temseg.kind` = 'job'",
             "orderByKey": "metrics.`final/val/f1_otsu`", "orderByAsc": False,
             "selectedColumns": list(COLUMNS), "columnOrder": list(COLUMNS),
             "columnWidths": COLUMN_WIDTHS, "runListHidden": False}
    client.set_experiment_tag(exp.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}",
                              json.dumps(state))
    return exp.experiment_id, len(jobs)


def start_server(db: Path, artifact_root: Path, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port, reachable from the browser under ``HOST_ALIAS``."""
    origin = f"http://{HOST_ALIAS}:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--default-artifact-root", str(artifact_root), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--allowed-hosts", f"{HOST_ALIAS}:{port},127.0.0.1:{port},localhost:{port}",
           "--cors-allowed-origins", origin]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    """Seconds until ``/health`` answered; raises with the server log's tail otherwise."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise UICheckError(f"mlflow server exited with {proc.returncode}; log {log}: "
                               + log.read_text()[-400:].replace("\n", " | "))
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise UICheckError(f"mlflow server at {base} not healthy after {timeout_s:.0f} s; log {log}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and its uvicorn workers (the process group it leads), killing if need be."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def chromium(exe: str, url: str, port: int, profile: Path, *extra: str,
             timeout_s: float = 180.0) -> subprocess.CompletedProcess:
    """Run headless Chromium once on ``url`` with ``HOST_ALIAS`` resolved to 127.0.0.1."""
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
           f"--host-resolver-rules=MAP {HOST_ALIAS} 127.0.0.1", *extra, url]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise UICheckError(f"{exe} did not finish within {timeout_s:.0f} s on {url}") from None


def image_stats(path: Path) -> dict[str, float]:
    """Size, grey-level s.d. and fraction of non-background pixels of a screenshot."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("L"), dtype=float)
    background = np.median(img)
    return {"width": img.shape[1], "height": img.shape[0], "std": float(img.std()),
            "ink_fraction": float(np.mean(np.abs(img - background) > 24))}


def check_screenshot(path: Path, min_std: float = 8.0, min_ink: float = 0.01) -> dict[str, float]:
    """Stats of the screenshot; raises if it is missing, tiny or (nearly) uniform."""
    if not path.is_file() or path.stat().st_size < 2000:
        raise UICheckError(f"{path}: no screenshot was written (or it is nearly empty)")
    stats = image_stats(path)
    if stats["std"] < min_std or stats["ink_fraction"] < min_ink:
        raise UICheckError(f"{path}: screenshot looks blank (grey s.d. {stats['std']:.1f}, "
                           f"{100 * stats['ink_fraction']:.2f}% non-background pixels)")
    return stats


def ui_check(store: Path, out: Path, experiment: str = "temseg-ablation",
             chromium_exe: str | None = None, dom_check: bool = True,
             server_timeout_s: float = 240.0) -> dict[str, object]:
    """Serve ``store`` (``mlflow.db`` + ``artifacts/``), screenshot the run table to ``out``.

    Returns a dict of what was checked (timings in s, screenshot stats, run names found).
    """
    exe = find_chromium(chromium_exe)
    store = store.resolve()
    report: dict[str, object] = {"store": str(store), "screenshot": str(out)}
    with tempfile.TemporaryDirectory(prefix="temseg-ui-") as tmp_s:
        tmp = Path(tmp_s)
        db = copy_store(store / "mlflow.db", tmp)
        exp_id, n_jobs = add_shared_view(f"sqlite:///{db}", experiment)
        if n_jobs == 0:
            raise UICheckError(f"{store / 'mlflow.db'}: experiment {experiment!r} has no job runs "
                               "to show; run a sweep first")
        report["job_runs"] = n_jobs
        port = free_port()
        log = tmp / "server.log"
        proc = start_server(db, store / "artifacts", port, log)
        try:
            report["server_start_s"] = round(wait_healthy(f"http://127.0.0.1:{port}", proc, log,
                                                          server_timeout_s), 1)
            url = (f"http://{HOST_ALIAS}:{port}/#/experiments/{exp_id}/runs"
                   f"?viewStateShareKey={VIEW_KEY}")
            report["url"] = url
            out.parent.mkdir(parents=True, exist_ok=True)
            shot = tmp / "shot.png"
            t0 = time.monotonic()
            res = chromium(exe, url, port, tmp / "profile", f"--screenshot={shot}")
            report["screenshot_s"] = round(time.monotonic() - t0, 1)
            if not shot.is_file():
                raise UICheckError(f"{exe} wrote no screenshot (exit {res.returncode}): "
                                   + res.stderr[-300:].replace("\n", " | "))
            report.update(check_screenshot(shot))
            shutil.copyfile(shot, out)
            if dom_check:
                from mlflow.tracking import MlflowClient

                names = sorted({r.info.run_name for r in MlflowClient(f"sqlite:///{db}").search_runs(
                    [exp_id], "tags.`temseg.kind` = 'job'", max_results=500)})
                dom = chromium(exe, url, port, tmp / "profile-dom", "--dump-dom").stdout
                missing = [n for n in names if n not in dom]
                report["run_names_on_page"] = len(names) - len(missing)
                if missing:
                    raise UICheckError(f"{url}: the rendered page lacks run(s) {missing[:5]} "
                                       f"({len(dom)} characters of DOM)")
        finally:
            stop(proc)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=ROOT / "mlruns",
                    help="folder with mlflow.db and artifacts/ (default: the project's mlruns/)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "mlflow_ui.png")
    ap.add_argument("--experiment", default="temseg-ablation")
    ap.add_argument("--chromium", default=None, help="browser executable (default: chromium)")
    ap.add_argument("--no-dom-check", action="store_true",
                    help="skip the second browser pass that looks for the run names")
    args = ap.parse_args(argv)
    try:
        report = ui_check(args.store, args.out, args.experiment, args.chromium,
                          dom_check=not args.no_dom_check)
    except UICheckError as err:
        print(f"ui-check FAILED: {err}", file=sys.stderr)
        return 1
    for k, v in report.items():
        print(f"{k:>18}: {v}")
    print("ui-check OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

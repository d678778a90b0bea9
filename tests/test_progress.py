"""The sweep-level progress line: counting job folders, counting a sweep's jobs, and a real
parallel multirun that prints it instead of interleaved per-job progress bars."""

from __future__ import annotations

import json
import os
import time

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from temseg_ablation.app import progress
from temseg_ablation.app.config import CONFIG_DIR
from temseg_ablation.app.progress import STATUS_FILE

from .procs import app_cmd, run_app


def test_sweep_progress_counts_fresh_status_files(tmp_path):
    started = time.time()
    for i, state in enumerate(("finished", "skipped", "failed")):
        job = tmp_path / f"{i}_norm"
        job.mkdir()
        (job / STATUS_FILE).write_text(json.dumps({"status": state}))
    (tmp_path / "3_norm" / ".hydra").mkdir(parents=True)  # started, no status yet
    (tmp_path / "3_norm" / ".hydra" / "config.yaml").write_text("a: 1\n")
    old = tmp_path / "4_norm"  # a status left by an earlier call on the same folder
    old.mkdir()
    (old / STATUS_FILE).write_text(json.dumps({"status": "finished"}))
    os.utime(old / STATUS_FILE, (started - 3600, started - 3600))
    os.utime(old, (started - 3600, started - 3600))
    p = progress.sweep_progress(tmp_path, started, total=10, now=started + 300)
    assert (p.done, p.running, p.failed, p.total) == (2, 1, 1, 10)
    # 3 jobs completed in 5 minutes: the other 7 take 7 x 100 s
    assert p.eta_s == pytest.approx(700.0)
    assert p.line() == "jobs 2/10 done, 1 running, 1 failed, elapsed 5m, ETA 12m"
    assert progress.sweep_progress(tmp_path, started, None, started + 60).eta_s is None
    assert progress.SweepProgress(0, 0, 0, 3, 4000).line().endswith("elapsed 1h07m")


def test_count_sweep_jobs_is_the_product_of_the_sweep_axes():
    assert progress.count_sweep_jobs(["model=norm,twoconv_norm", "seed=range(0,3)", "optim.lr=1e-3"]) == 6
    assert progress.count_sweep_jobs(["seed=0,1"], {"model": "norm,norm_k7,norm_depth3"}) == 6
    assert progress.count_sweep_jobs(["model=norm"]) == 1
    assert progress.count_sweep_jobs(["seed=interval(0,1)"]) is None  # not a basic-sweeper axis


def test_count_sweep_jobs_expands_a_glob_over_the_config_group():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        models = [m for m in loader.get_group_options("model")]
        assert progress.count_sweep_jobs(["model=glob(*)", "seed=0,1"], None, loader) == 2 * len(models)
        twoconv = [m for m in models if m.startswith("twoconv")]
        assert twoconv and progress.count_sweep_jobs(["model=glob(twoconv*)"], None, loader) == len(twoconv)


def test_ticker_prints_on_change_and_a_final_line(tmp_path):
    lines: list[str] = []
    ticker = progress.ProgressTicker(tmp_path, total=2, poll_s=0.05, write=lines.append).start()
    job = tmp_path / "0_norm"
    job.mkdir()
    time.sleep(0.3)
    (job / STATUS_FILE).write_text(json.dumps({"status": "finished"}))
    time.sleep(0.3)
    ticker.stop()
    assert lines[0].startswith("progress: jobs 0/2 done, 1 running, 0 failed")
    assert any(s.startswith("progress: jobs 1/2 done, 0 running") for s in lines)
    assert lines[-1].startswith("progress: jobs 1/2 done") and "ETA" in lines[-1]
    # unchanged counts are not repeated at every poll
    assert len(lines) <= 3


@pytest.mark.slow
def test_a_parallel_sweep_shows_one_progress_line_not_job_bars(tmp_path, subprocess_env):
    env = {**subprocess_env, progress.POLL_ENV: "0.5"}
    cmd = app_cmd("seed=0,1,2", "hydra/launcher=parallel", "trainer.enable_progress_bar=true")
    result = run_app(cmd, env, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    lines = [s for s in out.splitlines() if s.startswith("progress: ")]
    assert lines and lines[-1].startswith("progress: jobs 3/3 done, 0 running, 0 failed"), out[-4000:]
    # the jobs' own Lightning bars stay off the terminal even when asked for
    assert "it/s]" not in out and "Epoch 0:" not in out


@pytest.mark.slow
def test_a_sequential_sweep_prints_the_line_between_jobs(tmp_path, subprocess_env):
    result = run_app(app_cmd("seed=0,1"), subprocess_env, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    lines = [s.split(", elapsed")[0] for s in out.splitlines() if s.startswith("progress: ")]
    assert lines == ["progress: jobs 1/2 done, 0 running, 0 failed",
                     "progress: jobs 2/2 done, 0 running, 0 failed"], out[-4000:]


def test_the_line_can_be_turned_off_for_a_caller_that_prints_its_own(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    assert not progress.ticker_enabled()
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    assert progress.ticker_enabled()

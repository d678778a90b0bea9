"""Smoke tests of the benchmark suite (experiments/bench): table rows and ratios, never speed."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench"
sys.path.insert(0, str(BENCH))

import bench_common as common  # noqa: E402
import bench_sweep  # noqa: E402
import bench_training  # noqa: E402
from bench_common import Row  # noqa: E402


def _tiny_unet() -> torch.nn.Module:
    from temseg_ablation.models import build_model

    torch.manual_seed(0)
    return build_model("unet", encoder_channels=(4, 8), decoder_channels=(8, 4), head_channels=4,
                       norm="batch")


def test_ratio_is_value_over_baseline_and_none_without_one():
    r = Row(group="training", item="x", value=3.0, unit="img/s", base_name="bare", base_value=4.0)
    assert r.ratio == pytest.approx(0.75)
    assert r.as_record()["ratio"] == pytest.approx(0.75)
    assert Row(group="sweep", item="y", value=10.0, unit="s").ratio is None
    assert Row(group="sweep", item="y", value=None, unit="s", base_value=2.0).ratio is None


def test_rate_from_times_uses_total_time_and_rejects_empty():
    # 2 steps of 4 images taking 1 s and 3 s: 8 images in 4 s, not the mean of 4 and 1.33 img/s
    assert common.rate_from_times([1.0, 3.0], 4) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no timed steps"):
        common.rate_from_times([], 4)


def test_markdown_table_escapes_pipes_and_orders_groups():
    rows = [Row(group="sweep", item="s", value=None, unit="s"),
            Row(group="training", item="t", value=2.0, unit="img/s", base_name="bare",
                base_value=4.0, derived="max|d| 1")]
    md = common.markdown_table(rows).splitlines()
    assert len(md) == 4
    assert md[2].startswith("| training | t | 2 img/s | bare 4 img/s | 0.500 |")
    assert "max\\|d\\| 1" in md[2]
    assert md[3].startswith("| sweep |")


def test_partial_run_keeps_rows_of_groups_it_did_not_measure(tmp_path):
    info = {"cpu_model": "test"}
    full = [Row(group="training", item="a", value=1.0, unit="img/s", base_name="b", base_value=2.0),
            Row(group="sweep", item="s", value=None, unit="s", verdict=bench_sweep.NOT_MEASURED)]
    common.write_results(full, info, tmp_path, groups_run=common.GROUPS)
    new_sweep = Row(group="sweep", item="s", value=600.0, unit="s")
    common.write_results([new_sweep], info, tmp_path, groups_run=["sweep"])
    rows = common.read_rows_csv(tmp_path / "results.csv")
    assert sorted((r.group, r.value) for r in rows) == [("sweep", 600.0), ("training", 1.0)]
    kept = next(r for r in rows if r.group == "training")
    assert kept.ratio == pytest.approx(0.5)
    assert "| training | a |" in (tmp_path / "results.md").read_text()
    raw = json.loads((tmp_path / "results.json").read_text())  # raw records kept the same way
    assert sorted((r["group"], r["value"]) for r in raw) == [("sweep", 600.0), ("training", 1.0)]


def test_sweep_row_reads_last_measurement_or_says_not_measured(tmp_path):
    missing = bench_sweep.run(False, out_file=tmp_path / "none.json")
    assert missing[0].value is None and missing[0].verdict == bench_sweep.NOT_MEASURED
    rec = {"wall_s": 900.0, "n_jobs": 15, "n_failed": 0, "returncode": 0,
           "command": "-m temseg_ablation -m model=glob(*)", "measured_at": "2026-01-01 00:00",
           "machine": {"cpu_model": "test", "cpu_count": 2, "torch": "x"}}
    (tmp_path / "sweep.json").write_text(json.dumps(rec))
    row = bench_sweep.run(False, out_file=tmp_path / "sweep.json")[0]
    assert row.value == 900.0 and row.verdict == "ok" and "60 s per job" in row.derived
    assert row.measured_at == "2026-01-01 00:00"


def test_bare_and_paper_style_loops_train_the_same_batches():
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(2, 1, 16, 16, generator=gen),
                "mask": (torch.rand(2, 16, 16, generator=gen) > 0.7).long()} for _ in range(2)]
    net = _tiny_unet()
    before = [p.detach().clone() for p in net.parameters()]
    bare = bench_training.BareLoop(net, batches, 1e-3, torch.device("cpu"))
    for _ in range(3):
        bare.step()
    assert len(bare.times) == 3 and all(t > 0 for t in bare.times)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))

    images = [b["image"][k, 0].numpy().astype(np.float64) for b in batches for k in range(2)]
    masks = [b["mask"][k].numpy().astype(np.float64) for b in batches for k in range(2)]
    assert images[0].dtype == np.float64
    paper = bench_training.PaperStyleLoop(_tiny_unet(), images, masks, 2, 1e-3, torch.device("cpu"))
    for _ in range(3):
        paper.step()
    assert len(paper.times) == 3 and all(math.isfinite(v) for v in paper.losses)
    assert isinstance(paper.model, torch.nn.DataParallel)
    seconds, f1 = paper.metrics_pass(2)
    assert seconds > 0 and 0.0 <= f1 <= 1.0


def test_training_rows_compute_overhead_from_the_measured_rates():
    spec = bench_training.TrainSpec("norm", 256, batch=4, warmup=1, steps=2)
    result = {"spec": spec, "framework_times": [1.0, 1.0], "bare_times": [0.9, 1.0],
              "data_s_per_batch": 0.05, "paper_times": [1.2, 1.2], "paper_metric_s": 0.1}
    train, paper = bench_training.rows_from(result)
    assert train.value == pytest.approx(4.0) and train.base_value == pytest.approx(8 / 1.9)
    assert train.ratio == pytest.approx(4.0 / (8 / 1.9))
    assert train.derived == f"overhead {(1 / train.ratio - 1) * 100:+.1f} %"
    assert train.verdict == "FAIL"  # 5.3 % > 5 %
    assert paper.group == "paper_loop" and paper.ratio == pytest.approx(1.2)


def test_overhead_interval_brackets_the_overhead_and_narrows_with_more_steps():
    g = np.random.default_rng(1)
    bare_few = 1.0 + 0.1 * g.standard_normal(4)
    bare_many = 1.0 + 0.1 * g.standard_normal(64)
    lo4, hi4 = bench_training.overhead_interval(1.05 * bare_few + 0.02 * g.standard_normal(4), bare_few)
    lo64, hi64 = bench_training.overhead_interval(
        1.05 * bare_many + 0.02 * g.standard_normal(64), bare_many)
    assert lo64 < 5.0 < hi64 and hi64 - lo64 < hi4 - lo4
    # identical loops: no spread at all
    assert bench_training.overhead_interval([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="two paired"):
        bench_training.overhead_interval([1.0], [1.0])


def test_a_stalled_step_is_dropped_from_every_loop_alike():
    fw, bare = [1.0, 1.1, 9.0, 1.0], [0.95, 1.0, 1.0, 1.0]  # step 2: another process stalled us
    keep = bench_training.quiet_steps(fw, bare)
    assert keep.tolist() == [True, True, False, True]
    spec = bench_training.TrainSpec("norm", 256, batch=4, warmup=1, steps=4)
    row = bench_training.rows_from({"spec": spec, "framework_times": fw, "bare_times": bare,
                                    "data_s_per_batch": 0.0})[0]
    assert row.value == pytest.approx(common.rate_from_times([1.0, 1.1, 1.0], 4))
    assert row.base_value == pytest.approx(common.rate_from_times([0.95, 1.0, 1.0], 4))
    assert "1 stalled step(s)" in row.note and row.raw["kept"] == keep.tolist()
    with pytest.raises(ValueError, match="same number"):
        bench_training.quiet_steps([1.0, 1.0], [1.0])


@pytest.mark.slow
def test_tiny_suite_end_to_end_writes_expected_rows(tmp_path):
    """Every group through its real code path (Trainer, MLflow, metrics) at minimal sizes."""
    import run_all

    out = tmp_path / "out"
    status = run_all.main(["--profile", "tiny", "--device", "cpu", "--out", str(out),
                           "--root", str(tmp_path / "root"),
                           "--sweep-file", str(tmp_path / "sweep.json")])
    assert status == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)

    profile = run_all.tiny_profile()
    assert len(by_group["training"]) == len(profile.train)
    assert [r["item"].split(":")[0] for r in by_group["training"]] == [
        "Norm 32x32 b2", "TwoConv_Norm 32x32 b2"]
    assert len(by_group["paper_loop"]) == 1  # Norm only
    assert len(by_group["validation"]) == 2
    n_options = 5  # fp32, channels-last, inference_mode, both, bf16 (compile is off in tiny)
    assert len(by_group["inference"]) == n_options * len(profile.infer_shapes)
    assert sum("best" in r["verdict"] for r in by_group["inference"]) == len(profile.infer_shapes)
    assert len(by_group["pseudolabel"]) == 1 and by_group["pseudolabel"][0]["verdict"] == "pass"
    assert by_group["sweep"][0]["verdict"] == bench_sweep.NOT_MEASURED

    for r in rows:
        if r["base_value"] not in ("", "None") and r["value"] not in ("", "None"):
            assert float(r["ratio"]) == pytest.approx(float(r["value"]) / float(r["base_value"]))

    # the table's rates are the measured step times, not anything else
    raw = {r["item"]: r for r in json.loads((out / "results.json").read_text())}
    for r in by_group["training"]:
        meas = raw[r["item"]]["raw"]
        assert len(meas["framework_step_s"]) == 2 and len(meas["bare_step_s"]) == 2
        fw = [t for t, k in zip(meas["framework_step_s"], meas["kept"], strict=True) if k]
        bare = [t for t, k in zip(meas["bare_step_s"], meas["kept"], strict=True) if k]
        assert float(r["value"]) == pytest.approx(common.rate_from_times(fw, 2))
        assert float(r["base_value"]) == pytest.approx(common.rate_from_times(bare, 2))
    md = (out / "results.md").read_text()
    assert "cpu_model" in md and "| inference |" in md


@pytest.mark.slow
def test_sweep_timing_runs_the_app_and_records_the_jobs(tmp_path):
    """The --sweep path on a one-job glob with tiny settings: a record with jobs and exit status."""
    from .conftest import TINY

    out = tmp_path / "sweep.json"
    row = bench_sweep.run(True, out_file=out, pattern="norm", overrides=TINY,
                          log=lambda s: None)[0]
    rec = json.loads(out.read_text())
    assert rec["returncode"] == 0, (tmp_path / "sweep.log").read_text()[-2000:]
    assert rec["n_jobs"] == 1 and rec["n_failed"] == 0 and rec["wall_s"] > 0
    assert "model=glob(norm)" in rec["command"]
    assert row.value == pytest.approx(rec["wall_s"]) and row.verdict == "ok"
    assert (tmp_path / "sweep.log").exists()

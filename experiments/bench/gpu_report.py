"""``gpu.md`` from the record that ``gpu.py`` measured (no measurement here)."""

from __future__ import annotations

from typing import Any


def _n(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _gib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**30:.2f}"


def _spread(r: dict[str, float]) -> str:
    return f"{_n(r['median'])} ({_n(r['min'], 3)}-{_n(r['max'], 3)})"


def _tols(tols: dict[str, float]) -> str:
    return ", ".join(f"{v:g} ({k})" for k, v in tols.items() if k != "eager fp32")


def _inference(model: dict[str, Any]) -> list[str]:
    lines = ["| mode | status | check (max abs prob diff / tol) | batch | frames/s median (min-max) "
             "| peak GiB | stop |", "|---|---|---|---|---|---|---|"]
    for r in model["inference"]:
        checks = r.get("checks") or []
        worst = max((c["max_abs_prob"] for c in checks), default=None)
        tol = checks[0]["tolerance"] if checks else None
        check = f"{_n(worst, 2)} / {_n(tol, 2)}" if checks else "-"
        rows = r["batches"] or [None]
        for i, b in enumerate(rows):
            cells = ([r["mode"], r["status"], check] if i == 0 else ["", "", ""]) + \
                ["-", "-", "-", r.get("stop", "") if i == len(rows) - 1 else ""]
            if b is not None:
                best = r.get("best", {}).get("batch") == b["batch"]
                cells[3:6] = [f"{b['batch']}{' (best)' if best else ''}", _spread(b["fps"]),
                              _gib(b["peak_mem_bytes"])]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _training(model: dict[str, Any]) -> list[str]:
    lines = ["| mode | status | max abs prob diff / tol | rel grad diff / tol | images/s "
             "median (min-max) | peak GiB |", "|---|---|---|---|---|---|"]
    for r in model["training"]:
        c = r.get("check")
        prob = f"{_n(c['max_abs_prob'], 2)} / {_n(c['prob_tolerance'], 2)}" if c else "-"
        grad = f"{_n(c['rel_grad'], 2)} / {_n(c['grad_tolerance'], 2)}" if c else "-"
        ips = _spread(r["images_per_s"]) if "images_per_s" in r else r.get("reason", "not used")
        lines.append(f"| {r['mode']} | {r['status']} | {prob} | {grad} | {ips} | "
                     f"{_gib(r.get('peak_mem_bytes'))} |")
    return lines


def _projection(proj: dict[str, Any]) -> list[str]:
    lines = []
    for group, title in (("sweep", "Fifteen-variant sweep (one run each)"),
                         ("table1", f"Table 1, PROFILE=paper ({proj['seeds_table1']} seeds per arm)")):
        g = proj[group]
        lines += [f"**{title}: {_n(g['total_h'], 3)} h as configured (eager fp32), "
                  f"{_n(g['total_h_best_mode'], 3)} h with the best agreeing training mode.**", "",
                  "| job | train img/s (eager) | val frames/s (batch 1) | crops / val frames "
                  "| epoch s | epochs x runs | data-bound | total h |", "|---|---|---|---|---|---|---|---|"]
        for j in g["jobs"]:
            lines.append(f"| {j['name']} | {_n(j['train_images_per_s'])} | "
                         f"{_n(j['infer_b1_frames_per_s'])} | {j['train_crops']} / {j['val_frames']} | "
                         f"{_n(j['epoch_s'], 3)} | {j['epochs']} x {j['runs']} | "
                         f"{'yes' if j['data_bound'] else 'no'} | {_n(j['total_s'] / 3600, 3)} |")
        lines.append("")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The whole report as markdown."""
    m, tol, d = result["machine"], result["tolerances"], result["data"]
    out = ["# GPU benchmark (`make bench-gpu`)", ""]
    if result["reduced_run"]:
        out += ["**Reduced run** (not 1024 x 1024 on CUDA): the numbers only show that the "
                "script works; the targets are not assessed.", ""]
    out += [f"- device: {m['device']}; torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}; "
            f"{m['cpu_count']} CPUs; {m['date']}",
            f"- frames and training crops {result['size']} x {result['size']} (synthetic); "
            f"torch.compile backend {result['compile_backend']}",
            f"- timing: {result['timing']['warmup']} warm-up calls, then "
            f"{result['timing']['repeats']} timed blocks of >= {result['timing']['min_repeat_s']} s "
            "with device synchronisation; median (min-max) over the blocks",
            "- agreement with eager fp32 (TF32 off) on the same input, tolerance per mode: max "
            "|softmax prob diff| <= " + _tols(tol["prob"]) + "; training also one step's "
            "||grad diff|| / ||grad|| over all parameters <= " + _tols(tol["rel_grad"])
            + ". A mode that disagrees is not used.",
            f"- batch sweep doubles until a gain <= {tol['plateau_gain']:.0%}, out of memory or the "
            "cap; inputs already on the device (host-to-device copies not timed); peak memory is "
            "torch.cuda.max_memory_allocated", "",
            "## Targets", ""]
    out += [f"- {t['target']}: {_n(t['value'])} {t['unit']} -> **{t['verdict']}**"
            for t in result["targets"]]
    for name, model in result["models"].items():
        out += ["", f"## {name} ({model['parameters']} parameters)", "", "### Inference", ""]
        out += _inference(model)
        out += ["", f"### Training (batch {model['training'][0]['batch']})", ""]
        out += _training(model)
    out += ["", "## Data pipeline", "",
            f"The project's data module with the paper's settings (crop {d['crop']}, batch "
            f"{d['batch']}, augmentation {d['augment']}), {d['num_workers']} loader workers, "
            f"{d['frames_generated']} frames generated:", "",
            "| affine map applied | loader images/s | crops/s in one process | first batch s "
            "(worker start) | warp on the device, images/s |", "|---|---|---|---|---|"]
    ways = d.get("ways") or {"loader": d}
    labels = {"loader": "in the loader (scipy)",
              "deferred": "on the batch's device (`data.augment.affine_device=true`)"}
    for way, r in ways.items():
        out.append(f"| {labels.get(way, way)} | {_n(r['loader_images_per_s'])} | "
                   f"{_n(r['single_process_crops_per_s'])} | {_n(r['loader_first_batch_s'], 3)} | "
                   f"{_n(r.get('device_warp_images_per_s'))} |")
    out += ["", f"The projection uses the {'deferred' if 'deferred' in ways else 'loader'} row "
            "(the paper profile's setting): training faster than the loader waits for data, "
            "and a deferred warp adds its time to every training step.",
            "", "## Projected wall time (lower bounds)", "",
            "Per epoch: training crops / min(training rate, data rate) + validation frames / "
            "batch-1 inference rate, jobs one after another on this device; metrics, checkpoints "
            "and logging are not included. 'Best agreeing mode' scales each job's training rate "
            "by the speed-up measured on Norm (no extra conv) or TwoConv_Norm (extra conv): "
            f"{_n(result['projection']['best_mode_training_speedup']['norm'], 3)} x / "
            f"{_n(result['projection']['best_mode_training_speedup']['twoconv_norm'], 3)} x.", ""]
    out += _projection(result["projection"])
    return "\n".join(out) + "\n"

"""``make bench-gpu``: GPU throughput of the Norm and TwoConv_Norm UNets, and what it means for the sweeps.

    python experiments/bench/gpu.py                  # CUDA, 1024 x 1024 (exit 2 without CUDA)
    python experiments/bench/gpu.py --quick          # tiny CPU smoke run (tests)
    python experiments/bench/gpu.py --quick --device cuda   # tiny smoke run on the GPU first

Writes ``gpu.json`` and ``gpu.md`` under ``--out``: inference frames/s per execution mode over a
batch-size sweep with peak memory, training images/s at the paper's batch, the data pipeline's
own rate (the project's data module, paper settings), and the projected wall time of the
paper-scale fifteen-variant sweep and of ``make reproduce-table1 PROFILE=paper``. Every mode is
checked against eager fp32 first (see gpu_modes.py) and is not used where it disagrees.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parents[1]
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import gpu_modes as gm  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET_FPS = 1000.0   # Norm UNet inference, 1024 x 1024 frames
TARGET_SWEEP_H = 1.0  # paper-scale fifteen-variant sweep
VARIANTS = ("norm", "twoconv_norm")


def compose(overrides: list[str]) -> Any:
    """The project's Hydra config (conf/) with ``overrides``; nothing is run or written."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def build_net(cfg: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``build_model`` with the arguments of ``cfg.net`` (as the job builds it), and those arguments."""
    from omegaconf import OmegaConf

    from temseg_ablation.models import build_model

    args = OmegaConf.to_container(cfg.net, resolve=True)
    arch = args.pop("arch")
    args.pop("depth", None)  # implied by the channel lists
    torch.manual_seed(0)
    return build_model(arch, **args), {"arch": arch, **args}


def synthetic_frame(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised synthetic frame (1, 1, size, size) float32 and its class mask (size, size) int64."""
    from temseg_ablation.data.synthetic import SyntheticConfig, generate_frame
    from temseg_ablation.data.transforms import normalise

    frame = generate_frame(SyntheticConfig(height=size, width=size), seed)
    image = torch.from_numpy(normalise(np.asarray(frame.image)).astype(np.float32))[None, None]
    return image, torch.from_numpy((np.asarray(frame.mask) > 0).astype(np.int64))


def train_batch(image: torch.Tensor, mask: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` distinct views (rotations / flips) of one frame, so BatchNorm sees varied inputs."""
    xs, ys = [], []
    for i in range(batch):
        x, y = torch.rot90(image, i % 4, (-2, -1)), torch.rot90(mask, i % 4, (-2, -1))
        if (i // 4) % 2:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs).contiguous(), torch.stack(ys).contiguous()


def _loader_rate(d: dict[str, Any], multiple: int) -> dict[str, Any]:
    """Single-process crops/s and loader images/s of one data config (``d``: TEMDataModule kwargs)."""
    from temseg_ablation.data.datamodule import TEMDataModule

    batch = int(d["batch_size"])
    dm = TEMDataModule(input_multiple=multiple, **d)
    t0 = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    prepare_s = time.perf_counter() - t0
    ds = dm.train_set
    n_single = min(len(ds), 2 * batch)
    t0 = time.perf_counter()
    for i in range(n_single):
        ds[i]
    single = n_single / (time.perf_counter() - t0)
    times, t_prev, first = [], time.perf_counter(), None
    for b in dm.train_dataloader():
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
        first = b if first is None else first
    steady = times[1:] or times  # the first batch includes starting the workers
    return {"prepare_s": prepare_s, "single_process_crops_per_s": single,
            "loader_images_per_s": batch * len(steady) / sum(steady),
            "loader_first_batch_s": times[0], "loader_batches": len(times), "first": first}


def data_rate(cfg: Any, size: int, frames: int, workers: int, batches: int,
              multiple: int, device: torch.device | None = None,
              timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Crops + augmentation per second of the project's data module with the paper's settings.

    With an affine augmentation it is measured both ways: the map applied in the loader
    (scipy, ``affine_device=false``) and deferred to the batch on ``device``
    (``affine_device=true``, :func:`temseg_ablation.data.warp.affine_warp_batch`), whose own
    rate is timed there. Only ``frames`` frames are generated (the per-crop cost does not depend
    on how many there are); the cache lives in a temporary folder.
    """
    from omegaconf import OmegaConf

    from temseg_ablation.data.warp import affine_warp_batch

    d = OmegaConf.to_container(cfg.data, resolve=True)
    batch = int(d["batch_size"])
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="temseg-bench-gpu-") as cache:
        d.update(frames_per_experiment=frames, frame_height=size, frame_width=size,
                 crop_size=min(int(d["crop_size"]), size), heldout=False, cache_dir=cache,
                 num_workers=workers, progress=False, samples_per_epoch=batches * batch)
        affine = bool(d["augment"].get("affine"))
        ways = [("loader", False), ("deferred", True)] if affine else [("loader", False)]
        for name, deferred in ways:
            d["augment"] = {**d["augment"], "affine_device": deferred}
            r = _loader_rate(d, multiple)
            first = r.pop("first")
            out[name] = r
            if deferred and device is not None:
                img, lab = first["image"].to(device), first["labels"].to(device)
                par = first["affine"].to(device)
                warp = gm.timed(lambda i=img, la=lab, p=par: affine_warp_batch(i, la, p), device,
                                **(timing or {"warmup": 1, "repeats": 2, "min_repeat_s": 0.005}))
                r["device_warp_images_per_s"] = warp["median"] * batch
    main = out.get("deferred", out["loader"])
    return {"crop": d["crop_size"], "batch": batch, "num_workers": workers,
            "augment": {k: v for k, v in d["augment"].items() if k != "affine_device"},
            "frames_generated": frames, "ways": out, "prepare_s": main["prepare_s"],
            "single_process_crops_per_s": main["single_process_crops_per_s"],
            "loader_images_per_s": main["loader_images_per_s"],
            "loader_first_batch_s": main["loader_first_batch_s"],
            "device_warp_images_per_s": main.get("device_warp_images_per_s"),
            "affine_on": "device" if "deferred" in out else "loader"}


def split_counts(data: Any) -> tuple[int, int]:
    """(train crops per epoch, validation frames) of a data config, by the data module's rules."""
    n = int(data.n_experiments) * int(data.frames_per_experiment)
    n_val = max(1, round(n * float(data.val_fraction)))  # as datamodule.split_indices
    samples = data.samples_per_epoch
    return (int(samples) if samples is not None else n - n_val), n_val


def config_nets() -> dict[str, list[tuple[str, Any]]]:
    """The paper-scale configs of the fifteen variants and of the Table 1 arms."""
    variants = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
    arms = sorted(p.stem for p in (REPO / "conf" / "table1").glob("*.yaml"))
    return {"sweep": [(v, compose([f"model={v}", "experiment=paper"])) for v in variants],
            "table1": [(a, compose([f"+table1={a}", "experiment=paper"])) for a in arms]}


def eager_rates(net: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, batch: int,
                device: torch.device, timing: dict[str, Any], lr: float) -> dict[str, Any]:
    """Eager fp32 training images/s at ``batch`` and batch-1 inference frames/s (validation)."""
    eager = gm.MODES[0]
    run = gm.inference_runner(net, eager, device, "eager")
    frame = image.to(device)
    infer = gm.timed(lambda: run(frame), device, **timing)
    x, y = train_batch(image, mask, batch)
    x, y = x.to(device), y.to(device)
    _, _, step = gm.train_parts(net, eager, device, "eager", lr)
    train = gm.timed(lambda: step(x, y), device, **timing)
    return {"train_images_per_s": train["median"] * batch, "infer_b1_frames_per_s": infer["median"]}


def _with_warp(train_ips: float, warp_ips: float | None) -> float:
    """Training images/s once the deferred affine warp (same device, same stream) is added."""
    return train_ips if not warp_ips else 1.0 / (1.0 / train_ips + 1.0 / warp_ips)


def project(nets: dict[str, list[tuple[str, Any]]], image: torch.Tensor, mask: torch.Tensor,
            device: torch.device, timing: dict[str, Any], data_ips: float, seeds: int,
            speedup: dict[bool, float], warp_ips: float | None = None) -> dict[str, Any]:
    """Projected wall time of the sweep and of Table 1 from measured per-net rates.

    Per epoch: training crops / min(training rate, data rate) + validation frames / batch-1
    inference rate; jobs one after another on one GPU. Metric computation, checkpoints and
    logging are not included, so these are lower bounds.
    """
    measured: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"seeds_table1": seeds, "data_images_per_s": data_ips,
                           "device_warp_images_per_s": warp_ips}
    for group, items in nets.items():
        jobs = []
        for name, cfg in items:
            net, args = build_net(cfg)
            key = json.dumps(args, sort_keys=True)
            if key not in measured:
                measured[key] = eager_rates(net, image, mask, int(cfg.data.batch_size), device,
                                            timing, float(cfg.optim.lr))
            r = measured[key]
            n_train, n_val = split_counts(cfg.data)
            train_rate = min(_with_warp(r["train_images_per_s"], warp_ips), data_ips)
            epoch_s = n_train / train_rate + n_val / r["infer_b1_frames_per_s"]
            fast = _with_warp(r["train_images_per_s"] * speedup[bool(args.get("extra_conv"))],
                              warp_ips)
            fast_s = n_train / min(fast, data_ips) + n_val / r["infer_b1_frames_per_s"]
            runs = seeds if group == "table1" else 1
            epochs = int(cfg.trainer.max_epochs)
            jobs.append({"name": name, "net": args, **r, "train_crops": n_train, "val_frames": n_val,
                         "epochs": epochs, "runs": runs, "epoch_s": epoch_s,
                         "data_bound": data_ips < _with_warp(r["train_images_per_s"], warp_ips),
                         "job_s": epoch_s * epochs, "total_s": epoch_s * epochs * runs,
                         "total_s_best_mode": fast_s * epochs * runs})
        out[group] = {"jobs": jobs, "total_h": sum(j["total_s"] for j in jobs) / 3600,
                      "total_h_best_mode": sum(j["total_s_best_mode"] for j in jobs) / 3600}
    out["distinct_nets_measured"] = len(measured)
    return out


def quiet_logs() -> None:
    """Keep compiler / Lightning chatter out of the benchmark's own lines."""
    import logging
    import warnings

    for name in ("torch._dynamo", "torch._inductor", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)


def machine(device: torch.device) -> dict[str, Any]:
    """Device, library versions and host facts."""
    cuda = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def best_mode(items: list[dict[str, Any]], key) -> dict[str, Any] | None:
    """The fastest item whose mode agreed with eager fp32 (disagreeing / failed ones never win)."""
    ok = [i for i in items if i.get("status") == "ok"]
    return max(ok, key=key) if ok else None


def targets(result: dict[str, Any], full: bool) -> list[dict[str, Any]]:
    """The two targets with met / missed (or not assessed on a reduced run)."""
    inf = result["models"]["norm"]["inference_best"]
    fps = inf["best"]["fps"]["median"] if inf else None
    sweep = result["projection"]["sweep"]
    rows = [{"target": f">= {TARGET_FPS:g} frames/s Norm inference at 1024 x 1024",
             "value": fps, "unit": "frames/s", "met": fps is not None and fps >= TARGET_FPS},
            {"target": f"paper-scale 15-variant sweep projected under {TARGET_SWEEP_H:g} h "
                       "(as configured: eager fp32)",
             "value": sweep["total_h"], "unit": "h", "met": sweep["total_h"] < TARGET_SWEEP_H},
            {"target": f"the same sweep under {TARGET_SWEEP_H:g} h with the best agreeing "
                       "training mode", "value": sweep["total_h_best_mode"], "unit": "h",
             "met": sweep["total_h_best_mode"] < TARGET_SWEEP_H}]
    for r in rows:
        r["verdict"] = ("met" if r["met"] else "missed") if full else \
            "not assessed (reduced run: not 1024 x 1024 on CUDA)"
    return rows


def save_partial(out: Path, result: dict[str, Any]) -> None:
    """Keep what is measured so far in ``gpu.partial.json``: a lent GPU's minutes are few, and a
    run cut off at its limit should still say what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.partial.json").write_text(json.dumps(result, indent=1, default=str))


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every measurement; returns the result record."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    timing = {"warmup": args.warmup, "repeats": args.repeats, "min_repeat_s": args.min_repeat_s}
    modes = [m for m in gm.MODES if m.name in args.modes]
    paper = compose(["model=norm", "experiment=paper"])
    batch = int(paper.data.batch_size)
    image, mask = synthetic_frame(args.size)
    result: dict[str, Any] = {
        "machine": machine(device), "size": args.size, "reduced_run": not args.full,
        "compile_backend": args.compile_backend, "timing": timing,
        "tolerances": {"prob": {m.name: m.prob_tol for m in gm.MODES},
                       "rel_grad": {m.name: m.grad_tol for m in gm.MODES},
                       "plateau_gain": gm.PLATEAU_GAIN},
        "models": {}}
    for variant in VARIANTS:
        cfg = compose([f"model={variant}", "experiment=paper"])
        net, net_args = build_net(cfg)
        print(f"{variant}: {sum(p.numel() for p in net.parameters())} parameters", flush=True)
        net = gm.fit_briefly(net, image, mask, device, steps=args.fit_steps,
                             crop=min(256, args.size))
        torch._dynamo.reset()
        inference = []
        for m in modes:
            r = gm.sweep_inference(net, image, m, device, backend=args.compile_backend,
                                   max_batch=args.max_batch, timing=timing)
            inference.append(r)
            best = r.get("best")
            print(f"  infer {m.name}: {r['status']}"
                  + (f", {best['fps']['median']:.4g} frames/s at batch {best['batch']}" if best else "")
                  + f" ({r.get('stop', '')})", flush=True)
        x, y = train_batch(image, mask, batch)
        training = []
        for m in modes:
            r = gm.bench_training(net, x, y, m, device, backend=args.compile_backend,
                                  lr=float(cfg.optim.lr), timing=timing)
            training.append(r)
            ips = r.get("images_per_s")
            print(f"  train {m.name}: {r['status']}"
                  + (f", {ips['median']:.4g} images/s" if ips else f" {r.get('check', r.get('reason'))}"),
                  flush=True)
        result["models"][variant] = {
            "net": net_args, "parameters": sum(p.numel() for p in net.parameters()),
            "inference": inference, "training": training,
            "inference_best": best_mode(inference, lambda r: r["best"]["fps"]["median"]),
            "training_best": best_mode(training, lambda r: r["images_per_s"]["median"])}
        save_partial(args.out, result)
    workers = min(int(paper.data.num_workers), os.cpu_count() or 1) if args.workers is None else args.workers
    multiple = int(getattr(build_net(paper)[0], "input_multiple", 1))
    result["data"] = data_rate(paper, args.size, args.data_frames, workers, args.data_batches,
                               multiple, device, timing)
    save_partial(args.out, result)
    for way, r in result["data"]["ways"].items():
        print(f"data ({way} affine): {r['loader_images_per_s']:.4g} images/s with {workers} "
              f"workers ({r['single_process_crops_per_s']:.4g} crops/s in one process)"
              + (f", device warp {r['device_warp_images_per_s']:.4g} images/s"
                 if r.get("device_warp_images_per_s") else ""), flush=True)
    speedup = {}
    for extra_conv, variant in ((False, "norm"), (True, "twoconv_norm")):
        tr = {r["mode"]: r for r in result["models"][variant]["training"]}
        eager = tr.get(gm.MODES[0].name, {}).get("images_per_s")
        best = result["models"][variant]["training_best"]
        speedup[extra_conv] = best["images_per_s"]["median"] / eager["median"] if eager and best else 1.0
    proj_timing = {**timing, "repeats": max(1, min(3, args.repeats))}
    result["projection"] = project(config_nets(), image, mask, device, proj_timing,
                                   result["data"]["loader_images_per_s"], args.seeds, speedup,
                                   result["data"].get("device_warp_images_per_s"))
    result["projection"]["best_mode_training_speedup"] = {"norm": speedup[False],
                                                          "twoconv_norm": speedup[True]}
    result["targets"] = targets(result, args.full)
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks everything for a CPU smoke run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="default: cuda (cpu with --quick)")
    ap.add_argument("--size", type=int, default=None, help="frame / crop size in px (default 1024)")
    ap.add_argument("--quick", "--tiny", action="store_true",
                    help="tiny size, few iterations, CPU unless --device cuda (for tests)")
    ap.add_argument("--out", type=Path, default=BENCH)
    ap.add_argument("--max-batch", type=int, default=None, help="inference batch cap (default 256)")
    ap.add_argument("--repeats", type=int, default=None, help="timed blocks per measurement (5)")
    ap.add_argument("--seeds", type=int, default=8, help="Table 1 seeds per arm (default 8)")
    ap.add_argument("--modes", nargs="+", default=[m.name for m in gm.MODES],
                    choices=[m.name for m in gm.MODES], help="execution modes to measure")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; eager with --quick)")
    ap.add_argument("--workers", type=int, default=None,
                    help="data loader workers (default: the paper config's, capped at the CPUs)")
    a = ap.parse_args(argv)
    q = a.quick
    a.device = a.device or ("cpu" if q else "cuda")
    a.size = a.size or (32 if q else 1024)
    a.max_batch = a.max_batch or (4 if q else 256)
    a.repeats = a.repeats or (2 if q else 5)
    a.compile_backend = a.compile_backend or ("eager" if q else "inductor")
    a.workers = a.workers if a.workers is not None else (0 if q else None)
    a.warmup, a.min_repeat_s = (1, 0.005) if q else (3, 0.25)
    a.fit_steps, a.data_frames, a.data_batches = (3, 3, 2) if q else (40, 16, 24)
    a.full = a.device == "cuda" and a.size == 1024 and not q
    if a.size % 16:
        ap.error(f"--size {a.size} must be a multiple of 16 (the UNets' input multiple)")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write gpu.json / gpu.md; exit 2 when CUDA is asked for but absent."""
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench-gpu: --device cuda asked for but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}); use --device cpu or a CUDA machine", file=sys.stderr)
        return 2
    from gpu_report import markdown  # noqa: PLC0415 - keeps the CUDA check free of imports

    quiet_logs()
    result = run(args, torch.device(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "gpu.md").write_text(markdown(result))
    (args.out / "gpu.partial.json").unlink(missing_ok=True)
    for t in result["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.4g} {t['unit']}"
        print(f"target {t['target']}: {value} -> {t['verdict']}")
    print(f"wrote {args.out / 'gpu.md'} and {args.out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

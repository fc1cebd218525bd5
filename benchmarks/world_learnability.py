"""Can a YOLO11n learn the synthetic world from scratch on CPU, and how fast?

Renders ``--train`` frames from the world's ``seed`` stream and ``--val`` frames from its ``golden``
stream (both as plain local YOLO datasets, no S3), trains ``yolo11n.yaml`` from scratch with the
settings measured to work on small CPU datasets (imgsz 320, batch = nbs = 16, AdamW lr0 0.002), then
validates. Writes ``benchmarks/results/world_learnability.json``.

Run: ``.venv/bin/python -m benchmarks.world_learnability --epochs 30``; evaluate saved weights on the
golden set per drift slice: ``... --weights best.pt --val 200 --out benchmarks/results/world_drift_slices.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def slice_name(camera: str, drifts: list[str]) -> str:
    """Condition of a val frame: the new camera, the drifts in force, or ``no-drift``."""
    if camera == "cam4":
        return "new-camera-cam4" + ("+" + "+".join(drifts) if drifts else "")
    return "+".join(drifts) if drifts else "no-drift"


def eval_slices(model, root: Path, slices: dict, names: list[str], imgsz: int, batch: int) -> dict:  # type: ignore[no-untyped-def]
    """mAP50 / mAP50-95 of ``model`` on each slice of the val frames (slices with >= 5 frames)."""
    import yaml

    out = {}
    for name, paths in sorted(slices.items()):
        if len(paths) < 5:
            continue
        lst = root / f"slice_{name}.txt"
        lst.write_text("\n".join(paths) + "\n")
        y = root / f"slice_{name}.yaml"
        y.write_text(yaml.safe_dump({"path": str(root), "train": str(lst), "val": str(lst),
                                     "names": dict(enumerate(names))}))
        m = model.val(data=str(y), imgsz=imgsz, batch=batch, device="cpu", plots=False, verbose=False,
                      project=str(root / "runs"), name=f"val_{name}", exist_ok=True)
        out[name] = {"frames": len(paths), "mAP50": round(float(m.box.map50), 4), "mAP50-95": round(float(m.box.map), 4)}
    return out


def render_dataset(root: Path, settings, n_train: int, n_val: int, seed: int) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    """Write images/{train,val} + labels and data.yaml; returns (yaml path, stats)."""
    import cv2
    import numpy as np
    import yaml

    from detloop.world.publish import load_world, plan_stream
    from detloop.world.render import render_frame

    cfg = load_world(settings)
    classes = list(settings.classes)
    stats: dict = {"boxes": {"train": 0, "val": 0}, "per_class_train": [0] * len(classes), "render_seconds": 0.0,
                   "val_slices": {}}
    t0 = time.perf_counter()
    for split, stream, spec, n in (("train", "seed", cfg.seed_set, n_train), ("val", "golden", cfg.golden_set, n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for p in plan_stream(cfg, seed, stream, spec.start, spec.days, n):
            f = render_frame(cfg, classes, p.camera, p.day, p.index, p.frames_per_day, seed, stream)
            name = f"{p.camera}_{p.day.isoformat()}_{p.frame_id}"
            cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), f.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            (root / "labels" / split / f"{name}.txt").write_text(f.truth.to_yolo_txt(cfg.width, cfg.height))
            stats["boxes"][split] += len(f.truth)
            if split == "val":
                stats["val_slices"].setdefault(slice_name(f.camera, f.meta["drifts"]), []).append(
                    str(root / "images" / split / f"{name}.jpg"))
            if split == "train":
                stats["per_class_train"] = (np.array(stats["per_class_train"]) + np.bincount(
                    f.truth.class_id, minlength=len(classes))).tolist()
    stats["render_seconds"] = round(time.perf_counter() - t0, 2)
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(classes))}
    y = root / "data.yaml"
    y.write_text(yaml.safe_dump(data, sort_keys=False))
    return y, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="configs/test.yaml")
    ap.add_argument("--out", default=str(RESULTS / "world_learnability.json"))
    ap.add_argument("--weights", default=None,
                    help="Skip training: evaluate these weights on --val golden frames, per drift slice.")
    args = ap.parse_args()

    from detloop.offline import apply_offline_env, ensure_ultralytics_fonts
    from detloop.settings import load_settings

    settings = load_settings(args.config)
    apply_offline_env(settings)
    ensure_ultralytics_fonts(settings)

    import torch
    import ultralytics.utils.torch_utils as tu
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False, mlflow=False, tensorboard=False, wandb=False, clearml=False, comet=False, dvc=False)
    tu.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="world-learn-"))
    data_yaml, stats = render_dataset(work / "data", settings, args.train, args.val, args.seed)
    slices = stats.pop("val_slices")
    names = list(settings.classes)
    if args.weights:
        best = YOLO(args.weights)
        m = best.val(data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False,
                     verbose=False, project=str(work / "runs"), name="val", exist_ok=True)
        per_class = {names[int(c)]: round(float(a), 4) for c, a in zip(m.box.ap_class_index, m.box.ap50, strict=True)}
        out = {"benchmark": "world_learnability_slices", "date": date.today().isoformat(), "weights": args.weights,
               "val_frames": args.val, "val_stream": "golden",
               "val": {"mAP50": round(float(m.box.map50), 4), "mAP50-95": round(float(m.box.map), 4),
                       "ap50_per_class": per_class},
               "slices": eval_slices(best, work / "data", slices, names, args.imgsz, args.batch)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
        return
    model = YOLO("yolo11n.yaml")
    t0 = time.perf_counter()
    model.train(
        data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.batch,
        optimizer="AdamW", lr0=0.002, device="cpu", workers=2, pretrained=False, amp=False, plots=False,
        project=str(work / "runs"), name="train", exist_ok=True, seed=args.seed, deterministic=False,
        verbose=False, val=True, patience=1000,
    )
    train_s = time.perf_counter() - t0
    run_dir = work / "runs" / "train"
    curve = []
    with open(run_dir / "results.csv") as fh:
        for row in csv.DictReader(fh):
            row = {k.strip(): v for k, v in row.items()}
            curve.append({"epoch": int(float(row["epoch"])), "mAP50": float(row["metrics/mAP50(B)"]),
                          "mAP50-95": float(row["metrics/mAP50-95(B)"])})
    best = YOLO(str(run_dir / "weights" / "best.pt"))
    m = best.val(data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False, verbose=False,
                 project=str(work / "runs"), name="val", exist_ok=True)
    per_class = {names[int(c)]: round(float(ap50), 4) for c, ap50 in zip(m.box.ap_class_index, m.box.ap50, strict=True)}
    out = {
        "benchmark": "world_learnability",
        "date": date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
                    "load_avg_1min_at_end": round(os.getloadavg()[0], 2)},
        "data": {"train_frames": args.train, "val_frames": args.val, "frame": "640x480", "imgsz": args.imgsz,
                 "train_stream": "seed", "val_stream": "golden", **stats},
        "train": {"arch": "yolo11n.yaml (from scratch)", "epochs": args.epochs, "batch": args.batch, "nbs": args.batch,
                  "optimizer": "AdamW", "lr0": 0.002, "seconds": round(train_s, 1),
                  "seconds_per_epoch": round(train_s / args.epochs, 2)},
        "val": {"mAP50": round(float(m.box.map50), 4), "mAP50-95": round(float(m.box.map), 4),
                "ap50_per_class": per_class},
        "curve": curve,
        "slices": eval_slices(best, work / "data", slices, names, args.imgsz, args.batch),
        "weights": str(run_dir / "weights" / "best.pt"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("train", "val")}, indent=1))


if __name__ == "__main__":
    main()

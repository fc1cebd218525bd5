"""How fast does the synthetic world render, encode and publish?

Measures, single-threaded: frames/s (wall clock, and per CPU second, which holds up on a busy machine) of ``render_frame`` alone and with JPEG encoding (640x480, the
shipped ``configs/world.yaml``); optionally (``--s3``) the throughput of ``publish_world`` to the test
stack's S3 with N threads, under a throw-away key prefix (deleted afterwards). Writes ``benchmarks/results/world_generation.json``.

Run: ``.venv/bin/python -m benchmarks.world_generation [--frames 400] [--s3]``
(``--s3`` needs the test stack: ``DETLOOP_CONFIG=configs/test.yaml detloop stack up``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def world_stats(cfg, classes: list[str], cams: list[str], n: int) -> dict:  # type: ignore[no-untyped-def]
    """Class shares, sizes, crowds and visibility over ``n`` production frames of 2026-01-05..09 (no drift)."""
    import numpy as np

    from detloop.world.render import box_iou_xyxy, render_frame

    counts = np.zeros(len(classes))
    sizes, ious, vis = [], [], []
    crowd_frames = 0
    for i in range(n):
        f = render_frame(cfg, classes, cams[i % 4], date(2026, 1, 5) + timedelta(days=i % 5), i, n)
        t = f.truth
        counts += np.bincount(t.class_id, minlength=len(classes))
        sizes.extend(np.maximum(t.xyxy[:, 2] - t.xyxy[:, 0], t.xyxy[:, 3] - t.xyxy[:, 1]).tolist())
        vis.extend(t.data["visible"].tolist())
        crowd_frames += int((t.data["crowd"] >= 0).sum() >= 2)
        for j in np.flatnonzero(t.data["anchor"] >= 0):
            ious.append(box_iou_xyxy(tuple(t.xyxy[j]), tuple(t.xyxy[t.data["anchor"][j]])))
    sz = np.array(sizes)
    return {
        "frames": n,
        "class_share": {c: round(float(v), 4) for c, v in zip(classes, counts / counts.sum(), strict=True)},
        "size_px_frame_p5_p50_p95": [round(float(np.percentile(sz, q)), 1) for q in (5, 50, 95)],
        "share_smaller_than_32px_frame": round(float((sz < 32).mean()), 3),
        "min_size_px_frame": round(float(sz.min()), 1),
        "crowd_frame_share": round(crowd_frames / n, 3),
        "crowd_iou_min_max": [round(float(min(ious)), 3), round(float(max(ious)), 3)] if ious else None,
        "share_partially_hidden": round(float((np.array(vis) < 0.99).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--config", default="configs/test.yaml")
    ap.add_argument("--s3", action="store_true", help="Also time publish_world to the test stack's S3.")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--out", default=str(RESULTS / "world_generation.json"))
    args = ap.parse_args()

    import numpy as np

    from detloop.settings import load_settings
    from detloop.world.publish import load_world
    from detloop.world.render import encode_jpeg, render_frame

    settings = load_settings(args.config)
    cfg = load_world(settings)
    classes = list(settings.classes)
    cams = [c.id for c in cfg.cameras]
    day0 = date(2026, 2, 10)  # every drift active, all 5 cameras
    for c in cams:  # warm the background cache (static per camera)
        render_frame(cfg, classes, c, day0, 0, 1)

    t0, c0 = time.perf_counter(), time.process_time()
    boxes = 0
    for i in range(args.frames):
        f = render_frame(cfg, classes, cams[i % len(cams)], day0 + timedelta(days=i // 50), i, args.frames)
        boxes += len(f.truth)
    render_s, render_cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = world_stats(cfg, classes, cams, args.frames)

    t0, c0 = time.perf_counter(), time.process_time()
    sizes = []
    for i in range(args.frames):
        f = render_frame(cfg, classes, cams[i % len(cams)], day0 + timedelta(days=i // 50), i, args.frames)
        sizes.append(len(encode_jpeg(f.image, cfg.jpeg_quality)))
    enc_s, enc_cpu = time.perf_counter() - t0, time.process_time() - c0

    out: dict = {
        "benchmark": "world_generation",
        "date": date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1min_at_start": round(os.getloadavg()[0], 2)},
        "frames": args.frames,
        "frame": f"{cfg.width}x{cfg.height}",
        "boxes_per_frame": round(boxes / args.frames, 2),
        "render_fps": round(args.frames / render_s, 1),
        "render_jpeg_fps": round(args.frames / enc_s, 1),
        "render_fps_per_cpu_second": round(args.frames / render_cpu, 1),
        "render_jpeg_fps_per_cpu_second": round(args.frames / enc_cpu, 1),
        "jpeg_kb_mean": round(float(np.mean(sizes)) / 1024, 1),
        "world_stats_before_drift": stats,
    }
    if args.s3:
        from detloop.clients.s3 import S3Store
        from detloop.world.publish import TRUTH_PREFIX, publish_world

        s = settings.model_copy(deep=True)
        s.s3.production_prefix = f"bench-world-{uuid.uuid4().hex[:8]}/frames/"  # own prefix, shared buckets
        store = S3Store(s)
        days = max(1, args.frames // (len(cams) * 20))
        r = publish_world(s, day0, days, 20, store=store, threads=args.threads)
        r2 = publish_world(s, day0, days, 20, store=store, threads=args.threads)
        for bucket, prefix in ((s.s3.production_bucket, s.s3.production_prefix),
                               (s.s3.oracle_bucket, f"{TRUTH_PREFIX}{s.s3.production_prefix}")):
            for o in list(store.list(bucket, prefix)):
                store.delete(bucket, o.key)
        out["publish"] = {"frames": r.frames, "threads": args.threads, "seconds": round(r.seconds, 2),
                          "fps": round(r.frames / r.seconds, 1), "mb": round(r.bytes / 1e6, 1),
                          "republish_seconds_all_skipped": round(r2.seconds, 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""What the TIDE error breakdown (issue 19, :mod:`tasks.error_analysis`) costs per round, against the metric
computation every evaluation already runs.

``python -m benchmarks.error_cost`` (also ``detloop bench error-cost``). The breakdown classifies every
prediction, then recomputes the slice's metrics once per error type with those errors fixed (6 more
:func:`tasks.evaluation.compute_metrics` calls), so its cost should be about 7x one metric computation. Measured
on generated slices (no model, no images: the cost depends only on the boxes): per image a Poisson number of
ground-truth boxes (log-uniform sizes, 5 classes), predictions with every TIDE error type (localisation jitter,
class confusions, duplicates, background boxes, misses). Timings are the median of interleaved repeats; the
ratio is computed within each repeat.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine_info, utc_now, write_result

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ["c0", "c1", "c2", "c3", "c4"]


def make_slice(n_images: int, boxes_per_image: float, seed: int = 0) -> tuple[list[Any], list[Any], list[str]]:
    """``(gts, preds, cameras)`` of a generated slice of 640x480 frames (see the module docstring)."""
    from detloop.detections import Detections

    rng = np.random.default_rng(seed)
    gts, preds, cams = [], [], []
    for i in range(n_images):
        n = int(rng.poisson(boxes_per_image))
        side = np.exp(rng.uniform(np.log(10), np.log(160), n))
        cx, cy = rng.uniform(0, 640, n), rng.uniform(0, 480, n)
        xyxy = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side * 0.8], 1).clip(0, 640)
        cls = rng.choice(len(CLASSES), n, p=[0.4, 0.25, 0.2, 0.1, 0.05])
        gts.append(Detections(xyxy, np.ones(n), cls))
        p_xyxy, p_conf, p_cls = [], [], []
        for j in range(n):
            u = rng.uniform()
            if u < 0.15:
                continue  # missed
            box = xyxy[j] + rng.normal(0, side[j] * (0.3 if u < 0.25 else 0.05), 4)  # loc error for some
            c = int(rng.integers(len(CLASSES))) if u > 0.92 else int(cls[j])  # class confusion
            p_xyxy.append(box)
            p_conf.append(rng.uniform(0.3, 1.0))
            p_cls.append(c)
            if rng.uniform() < 0.05:  # duplicate
                p_xyxy.append(box + rng.normal(0, 2, 4))
                p_conf.append(rng.uniform(0.05, 0.5))
                p_cls.append(c)
        for _ in range(int(rng.poisson(1.5))):  # background
            s = float(np.exp(rng.uniform(np.log(10), np.log(120))))
            x, y = rng.uniform(0, 640 - s), rng.uniform(0, 480 - s)
            p_xyxy.append(np.array([x, y, x + s, y + s]))
            p_conf.append(rng.uniform(0.05, 0.7))
            p_cls.append(int(rng.integers(len(CLASSES))))
        preds.append(Detections(np.array(p_xyxy).reshape(-1, 4).clip(0, 640), np.array(p_conf), np.array(p_cls)))
        cams.append(f"cam{i % 5}")
    return gts, preds, cams


def run(sizes: list[int], boxes_per_image: float, repeats: int) -> dict[str, Any]:
    from tasks.error_analysis import breakdown
    from tasks.evaluation import compute_metrics

    rows = []
    for n in sizes:
        gts, preds, cams = make_slice(n, boxes_per_image, seed=n)
        t_m, t_b, ratios = [], [], []
        for _ in range(repeats):  # interleaved: one metric computation, then one breakdown
            t0 = time.perf_counter()
            compute_metrics("s", gts, preds, CLASSES, cams, 50)
            t1 = time.perf_counter()
            b = breakdown("s", gts, preds, CLASSES, cams, 50)
            t2 = time.perf_counter()
            t_m.append(t1 - t0)
            t_b.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
        all_g = b["groups"]["all"]
        rows.append({"images": n, "gt_boxes": int(sum(len(g) for g in gts)),
                     "predictions": int(sum(len(p) for p in preds)),
                     "metrics_s": round(float(np.median(t_m)), 3), "breakdown_s": round(float(np.median(t_b)), 3),
                     "ratio": round(float(np.median(ratios)), 2),
                     "ap50": all_g["ap"], "dap": {k: (None if v is None else round(v, 4))
                                                  for k, v in all_g["dap"].items()}})
        print(f"{n} images: metrics {rows[-1]['metrics_s']} s, breakdown {rows[-1]['breakdown_s']} s "
              f"({rows[-1]['ratio']}x)", flush=True)
    return {"benchmark": "error_cost", "created": utc_now(), "machine": machine_info(),
            "boxes_per_image": boxes_per_image, "repeats": repeats, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="detloop bench error-cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="300,1000", help="Comma-separated slice sizes (images).")
    ap.add_argument("--boxes-per-image", type=float, default=7.0, help="Mean ground-truth boxes per image.")
    ap.add_argument("--repeats", type=int, default=3, help="Interleaved repeats (the median is reported).")
    ap.add_argument("--out", type=Path, default=RESULTS / "error_cost.json", help="Result JSON.")
    a = ap.parse_args(argv)
    res = run([int(s) for s in a.sizes.split(",") if s.strip()], a.boxes_per_image, a.repeats)
    return write_result(a.out, res)


if __name__ == "__main__":
    main()

"""Benchmark 2: selection at scale, full strategy, on 2 cores.

    .venv/bin/python -m benchmarks.selection_scale [--frames 100000] [--dim 256] [--boxes 10] [--budget 1000]

100,000 scored frames x 256-d float32 embeddings x 10 boxes each (5 classes), budget 1,000, full
strategy: entropy + class balance + filter-then-k-center + 10 % random control arm + the per-frame
report with every applicable strategy's score. Measures the wall time of :func:`tasks.selection.select`
(flattening, scoring, aggregation, class balance, k-center, control draw, report rows) and the peak RSS
of the process (inputs included), in a fresh process. Target: < 10 s and < 2 GB.
Writes ``benchmarks/results/selection_scale.json``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine_info, utc_now, write_result

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_frames(n: int, dim: int, boxes: int, nc: int, seed: int = 0) -> list[Any]:
    """Synthetic scored frames: random sigmoid-like class vectors, boxes, clustered embeddings."""
    from detloop.contracts import FrameRef, ScoredFrame
    from detloop.detections import Detections

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32) * 3
    emb = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    logits = rng.normal(-2.5, 2.0, (n, boxes, nc)).astype(np.float32)
    cs = 1 / (1 + np.exp(-logits))
    xy = rng.uniform(0, 600, (n, boxes, 2)).astype(np.float32)
    wh = rng.uniform(5, 80, (n, boxes, 2)).astype(np.float32)
    xyxy = np.concatenate([xy, xy + wh], axis=2)
    frames = []
    for i in range(n):
        s = cs[i]
        det = Detections.__new__(Detections)  # arrays are already well-formed: skip validation cost
        det.xyxy, det.confidence, det.class_id, det.class_scores, det.data = (
            xyxy[i], s.max(1), s.argmax(1).astype(np.int64), s, {})
        ref = FrameRef("prod", f"frames/camera=c{i % 20}/date=2026-01-0{1 + i % 7}/{i:07d}.jpg", "etag", f"c{i % 20}",
                       f"2026-01-0{1 + i % 7}")
        frames.append(ScoredFrame(ref, 640, 480, det, emb[i]))
    return frames


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--boxes", type=int, default=10)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--diversity", default="filter_kcenter", choices=["none", "kcenter", "filter_kcenter"])
    ap.add_argument("--out", type=Path, default=RESULTS / "selection_scale.json")
    args = ap.parse_args(argv)

    from detloop.settings import SelectionSettings
    from tasks.selection import select

    rss0 = rss_mb()
    t0 = time.perf_counter()
    frames = make_frames(args.frames, args.dim, args.boxes, args.classes)
    build_s = time.perf_counter() - t0
    rss_inputs = rss_mb()
    settings = SelectionSettings(budget=args.budget, strategy="entropy", aggregation="sum", class_balance=True,
                                 diversity=args.diversity, control_share=0.1, control_min=20)
    labelled = [5000, 1200, 300, 40, 5][: args.classes] + [100] * max(0, args.classes - 5)
    t1 = time.perf_counter()
    res = select(frames, labelled, settings, round_seed=1)
    select_s = time.perf_counter() - t1
    peak = peak_rss_mb()
    out = {
        "benchmark": "selection_scale",
        "frames": args.frames,
        "embedding_dim": args.dim,
        "boxes_per_frame": args.boxes,
        "classes": args.classes,
        "budget": args.budget,
        "strategy": "entropy (sum) x class balance + " + args.diversity + " + 10% control arm + per-frame report",
        "select_seconds": round(select_s, 2),
        "build_inputs_seconds": round(build_s, 2),
        "rss_start_mb": round(rss0, 1),
        "rss_after_inputs_mb": round(rss_inputs, 1),
        "peak_rss_mb": round(peak, 1),
        "selected": len(res.selected),
        "control": len(res.control),
        "target": {"seconds": 10, "peak_rss_mb": 2048},
        "meets_target": bool(select_s < 10 and peak < 2048),
        "machine": machine_info(numpy=np.__version__),
        "when": utc_now(),
    }
    return write_result(args.out, out)


if __name__ == "__main__":
    main()

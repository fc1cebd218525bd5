"""The plots a detection engineer looks at first, per evaluated model: written as PNGs, logged to its MLflow run.

- ``confusion_matrix.png``: predicted class x true class at IoU 0.5, with ``background`` for missed boxes and
  false alarms (each class at its serving threshold, best F1 on the slice);
- ``pr_curves.png``: one precision-recall curve per class at IoU 0.5, its AP50 in the legend, the serving
  threshold marked;
- ``golden_frames.png``: a few golden frames with the truth (green) and the predictions at their serving
  thresholds (orange: class and confidence), the frames with the most errors first.

Pure given the inputs (matplotlib on the Agg backend, OpenCV for drawing). :func:`plots_for_report` draws them for
an :class:`~tasks.evaluation.EvalReport` on its threshold slice (the flows' evaluate step does, then registration
logs them to the challenger's MLflow run).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detloop.detections import Detections

PLOT_NAMES = ("confusion_matrix.png", "pr_curves.png", "golden_frames.png")


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: Path) -> Path:
    """``matrix`` ``(C + 1, C + 1)`` (rows predicted, columns true) as an annotated heat map, columns normalised."""
    plt = _plt()
    names = [*class_names, "background"]
    col = matrix.sum(axis=0, keepdims=True)
    norm = np.divide(matrix, col, out=np.zeros_like(matrix, dtype=np.float64), where=col > 0)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 1.0 * len(names) + 1.5), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pr_curves(gts: Sequence[Detections], preds: Sequence[Detections], class_names: Sequence[str],
                   thresholds: dict[str, float], title: str, path: Path) -> Path:
    """Per-class precision-recall curves at IoU 0.5 (AP50 in the legend), the serving threshold as a dot."""
    from tasks.evaluation import pr_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for k, name in enumerate(class_names):
        rec, prec, conf = pr_curve(gts, preds, k)
        if not len(rec) or rec[-1] == 0:
            ax.plot([], [], label=f"{name} (no match)")
            continue
        env = np.maximum.accumulate(prec[::-1])[::-1]  # interpolated precision
        ap = float(np.trapezoid(np.r_[env[0], env], np.r_[0.0, rec]))
        line = ax.plot(rec, env, label=f"{name} AP50 {ap:.3f}")[0]
        th = thresholds.get(name)
        if th is not None and (conf >= th).any():
            i = int(np.where(conf >= th)[0][-1])
            ax.plot(rec[i], env[i], "o", color=line.get_color(), markersize=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _errors(g: Detections, p: Detections) -> int:
    from detloop.ops import box_iou

    if not len(g) or not len(p):
        return len(g) + len(p)
    iou = box_iou(g.xyxy, p.xyxy)
    return int((iou.max(axis=1) < 0.5).sum() + (iou.max(axis=0) < 0.5).sum())


def draw_frames(images: Sequence[str], gts: Sequence[Detections], preds: Sequence[Detections],
                class_names: Sequence[str], thresholds: dict[str, float], path: Path, n: int = 6,
                tile: int = 320) -> Path:
    """A grid of up to ``n`` frames (most errors first): truth in green, predictions in orange with class and score."""
    import cv2

    th = np.array([thresholds.get(c, 0.25) for c in class_names], np.float32)
    shown = [p[p.confidence >= th[p.class_id]] if len(p) else p for p in preds]
    order = sorted(range(len(images)), key=lambda i: (-_errors(gts[i], shown[i]), i))[:n]
    tiles = []
    for i in order:
        img = cv2.imread(str(images[i]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        for (x1, y1, x2, y2) in gts[i].xyxy.astype(int):
            cv2.rectangle(img, (x1, y1), (x2, y2), (60, 200, 60), 2)
        for (x1, y1, x2, y2), c, s in zip(shown[i].xyxy.astype(int), shown[i].class_id, shown[i].confidence, strict=True):
            cv2.rectangle(img, (x1, y1), (x2, y2), (0, 140, 255), 1)
            cv2.putText(img, f"{class_names[int(c)]} {s:.2f}", (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 140, 255), 1, cv2.LINE_AA)
        scale = tile / max(img.shape[:2])
        img = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)))
        canvas = np.full((tile, tile, 3), 255, np.uint8)
        canvas[: img.shape[0], : img.shape[1]] = img
        cv2.putText(canvas, Path(images[i]).name[:40], (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        tiles.append(canvas)
    if not tiles:
        tiles = [np.full((tile, tile, 3), 255, np.uint8)]
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for t, canvas in enumerate(tiles):
        r, c = divmod(t, cols)
        grid[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = canvas
    cv2.imwrite(str(path), grid)
    return path


def write_eval_plots(out_dir: Path, images: Sequence[str], gts: Sequence[Detections], preds: Sequence[Detections],
                     class_names: Sequence[str], thresholds: dict[str, float], label: str) -> dict[str, str]:
    """Write the three plots of one model on one slice into ``out_dir``; returns ``{file name: path}``."""
    from tasks.evaluation import confusion_matrix

    out_dir.mkdir(parents=True, exist_ok=True)
    th = [thresholds.get(c, 0.25) for c in class_names]
    cm = confusion_matrix(gts, preds, len(class_names), th)
    paths = [
        plot_confusion(cm, class_names, f"{label}: confusion at IoU 0.5, serving thresholds",
                       out_dir / "confusion_matrix.png"),
        plot_pr_curves(gts, preds, class_names, thresholds, f"{label}: precision-recall at IoU 0.5",
                       out_dir / "pr_curves.png"),
        draw_frames(images, gts, preds, class_names, thresholds, out_dir / "golden_frames.png"),
    ]
    return {p.name: str(p) for p in paths}


def plots_for_report(report: Any, slices: Sequence[Any], class_names: Sequence[str], out_dir: Path) -> dict[str, str]:
    """Draw the plots of ``report`` on its threshold slice (golden) into ``out_dir``; also set ``report.plots``."""
    name = report.threshold_slice
    sl = next((s for s in slices if s.name == name), None)
    if sl is None or name not in report.predictions:
        return {}
    report.plots = write_eval_plots(out_dir, [it.image for it in sl.items], [it.gt for it in sl.items],
                                    report.predictions[name], class_names, report.thresholds, f"{report.model} on {name}")
    return report.plots

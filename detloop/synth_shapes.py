"""Tiny synthetic YOLO datasets of numpy-drawn shapes, for tests and benchmarks of training/evaluation.

This is not the synthetic world (``detloop.world``): it writes a plain Ultralytics dataset directory
(``images/<split>/*.png``, ``labels/<split>/*.txt``, ``data.yaml``) without S3 or manifests, so the
training and evaluation stages can be tested on their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPES = ("disc", "square", "triangle", "ring", "star")


def _draw(img: np.ndarray, kind: int, cx: float, cy: float, r: float, color: tuple[int, int, int]) -> None:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    dx, dy = xx - cx, yy - cy
    d = np.hypot(dx, dy)
    if kind == 0:  # disc
        mask = d <= r
    elif kind == 1:  # square
        mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif kind == 2:  # triangle (apex up)
        mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    elif kind == 3:  # ring
        mask = (d <= r) & (d >= r * 0.55)
    else:  # star-ish: disc modulated by angle
        ang = np.arctan2(dy, dx)
        mask = d <= r * (0.55 + 0.45 * np.cos(5 * ang) ** 2)
    img[mask] = color


def make_frame(
    rng: np.random.Generator, size: int = 320, n_objects: tuple[int, int] = (1, 4), num_classes: int = 5,
    r_range: tuple[float, float] = (10.0, 40.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame with shapes on a noisy background.

    Returns:
        image ``(size, size, 3)`` uint8 RGB, boxes ``(N, 4)`` xyxy pixels, class ids ``(N,)`` int64.
    """
    img = (rng.normal(90, 12, size=(size, size, 3))).clip(0, 255).astype(np.uint8)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    boxes, cls = [], []
    for _ in range(n):
        kind = int(rng.integers(0, num_classes))
        r = float(rng.uniform(*r_range))
        cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
        color = tuple(int(c) for c in rng.integers(150, 256, size=3))
        _draw(img, kind, cx, cy, r, color)  # type: ignore[arg-type]
        boxes.append([cx - r, cy - r, cx + r, cy + r])
        cls.append(kind)
    return img, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(cls, dtype=np.int64)


def write_yolo_dataset(
    root: str | Path,
    class_names: list[str],
    n_train: int = 16,
    n_val: int = 8,
    size: int = 320,
    seed: int = 0,
    r_range: tuple[float, float] = (10.0, 40.0),
) -> Path:
    """Write a YOLO dataset directory and return its ``data.yaml``."""
    import cv2
    import yaml

    from detloop.detections import Detections

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, boxes, cls = make_frame(rng, size, num_classes=len(class_names), r_range=r_range)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(root / "images" / split / f"{stem}.png"), img[:, :, ::-1])
            det = Detections(xyxy=boxes, confidence=np.ones(len(cls)), class_id=cls)
            (root / "labels" / split / f"{stem}.txt").write_text(det.to_yolo_txt(size, size))
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val",
            "names": dict(enumerate(class_names))}
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path

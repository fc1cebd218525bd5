"""Synthetic copy-paste of rare-class objects on box labels (Ultralytics' ``copy_paste`` needs segments).

Rules:

- Objects are cut out of **train-split** frames only (a val, control or golden object pasted into training would
  leak the evaluation), as the labelled box plus a soft mask estimated from the object's pixels against the local
  background (:func:`estimate_mask`: the ring around the box is the background; a pixel far from its colours is
  the object). When no mask can be estimated (a background as varied as the object, a mask that fills too little
  or too much of the box, or does not span it) the whole box is pasted.
- They are pasted onto **labelled train-split frames** (an unlabelled frame's other objects would be learned as
  background) at their own pixel size times a jitter in ``[1 - j, 1 + j]`` (cameras of one site see an object at
  similar sizes), at a random place where the pasted box covers no more than ``max_overlap`` of any existing box
  and no existing box covers more than ``max_overlap`` of it; the mask's edge is feathered (Gaussian,
  ``blend_px``) and the label is the pasted box.
- The synthetic frames form a new dataset version: the real version's real entries plus the synthetic ones,
  marked ``synthetic`` in its manifest (split ``train`` only, which the manifest enforces), so the golden set,
  the control arm and every evaluation slice never see one; the gate judges the round on the real version.

Pure core: :func:`estimate_mask`, :func:`cut_objects`, :func:`paste_objects`, :func:`rare_classes`; IO:
:func:`add_synthetic` (reads the version's blobs, writes the synthetic blobs and the new manifest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.errors import ConfigError, DataError

MIN_SIDE = 6  # px: smaller objects are not cut (no pixels to estimate a mask from, nothing to learn)
MASK_FILL = (0.15, 0.98)  # share of the box an estimated mask must fill to be believed
MASK_SPAN = 0.6  # the mask's own box must span this share of the labelled box's width and height


@dataclass
class Cutout:
    """One object cut out of a frame.

    Attributes:
        pixels: ``(h, w, 3)`` uint8, the labelled box's pixels.
        mask: ``(h, w)`` float32 in [0, 1], the object's soft mask (all ones: the whole box).
        class_id: its class.
        estimated: True when the mask was estimated from the pixels, False when it is the whole box.
    """

    pixels: np.ndarray
    mask: np.ndarray
    class_id: int
    estimated: bool


def estimate_mask(image: np.ndarray, box: Sequence[float], margin: float = 0.3) -> np.ndarray | None:
    """The object's soft mask inside ``box``, or None when none can be estimated.

    The background is the ring of ``margin`` x the box's longer side around it (inside the frame): its median
    colour and the 90th percentile of its pixels' distance to that colour. A box pixel is object to the degree
    its distance exceeds 1.5 x that spread (a soft ramp), after a 3 x 3 closing of the hard mask.

    Args:
        image: ``(H, W, 3)`` uint8.
        box: ``x1, y1, x2, y2`` in pixels.

    Returns:
        ``(h, w)`` float32 in [0, 1] over the integer box, or None.
    """
    import cv2

    h_img, w_img = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w_img, x2), min(h_img, y2)
    w, h = x2 - x1, y2 - y1
    if w < MIN_SIDE or h < MIN_SIDE:
        return None
    m = max(3, round(margin * max(w, h)))
    cx1, cy1, cx2, cy2 = max(0, x1 - m), max(0, y1 - m), min(w_img, x2 + m), min(h_img, y2 + m)
    crop = image[cy1:cy2, cx1:cx2].astype(np.float32)
    inside = np.zeros(crop.shape[:2], bool)
    inside[y1 - cy1 : y2 - cy1, x1 - cx1 : x2 - cx1] = True
    ring = crop[~inside]
    if len(ring) < 4 * (w + h):  # the box touches the frame on most sides: too little background seen
        return None
    mu = np.median(ring, axis=0)
    spread = float(np.percentile(np.linalg.norm(ring - mu, axis=1), 90))
    t = max(1.5 * spread, 12.0)
    d = np.linalg.norm(crop[inside].reshape(h, w, 3) - mu, axis=2)
    hard = (d > t).astype(np.uint8)
    hard = cv2.morphologyEx(hard, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    fill = float(hard.mean())
    if not MASK_FILL[0] <= fill <= MASK_FILL[1]:
        return None
    ys, xs = np.nonzero(hard)
    if (xs.max() - xs.min() + 1) < MASK_SPAN * w or (ys.max() - ys.min() + 1) < MASK_SPAN * h:
        return None
    soft = np.clip((d - t) / (0.5 * t) + 0.5, 0.0, 1.0).astype(np.float32)
    return np.maximum(soft, hard.astype(np.float32))


def cut_objects(image: np.ndarray, gt: Detections, class_ids: Sequence[int], max_cover: float = 0.1) -> list[Cutout]:
    """Cut the boxes of ``class_ids`` out of one labelled frame.

    Boxes smaller than ``MIN_SIDE`` px, or covered by another labelled box for more than ``max_cover`` of their
    area (the cut would carry a piece of another object without its label), are skipped.
    """
    from detloop.ops import box_area

    keep = set(int(c) for c in class_ids)
    out: list[Cutout] = []
    h_img, w_img = image.shape[:2]
    for i in range(len(gt)):
        c = int(gt.class_id[i])
        if c not in keep:
            continue
        x1, y1, x2, y2 = (round(v) for v in gt.xyxy[i])
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w_img, x2), min(h_img, y2)
        if x2 - x1 < MIN_SIDE or y2 - y1 < MIN_SIDE:
            continue
        others = np.delete(gt.xyxy, i, axis=0)
        if len(others):
            inter = _intersection(np.array([[x1, y1, x2, y2]], np.float64), others)[0]
            if inter.max() > max_cover * box_area(np.array([[x1, y1, x2, y2]], np.float64))[0]:
                continue
        mask = estimate_mask(image, (x1, y1, x2, y2))
        pixels = image[y1:y2, x1:x2].copy()
        est = mask is not None
        out.append(Cutout(pixels, mask if mask is not None else np.ones(pixels.shape[:2], np.float32), c, est))
    return out


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas ``(N, 4), (M, 4) -> (N, M)``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def _feather(mask: np.ndarray, blend_px: float) -> np.ndarray:
    """The mask with its edge blurred inward (the result is 0 on and outside the box border)."""
    import cv2

    if blend_px <= 0:
        return mask
    k = max(3, int(2 * round(2 * blend_px) + 1))
    padded = np.pad(mask, 1)  # the box's border fades out too: no hard seam with the new background
    blurred = cv2.GaussianBlur(padded, (k, k), blend_px)[1:-1, 1:-1]
    return np.minimum(blurred, mask)


def paste_objects(
    image: np.ndarray, gt: Detections, cutouts: Sequence[Cutout], rng: np.random.Generator, n: int,
    max_overlap: float = 0.2, scale_jitter: float = 0.2, blend_px: float = 2.0, tries: int = 50,
) -> tuple[np.ndarray, Detections, int]:
    """Paste ``n`` cutouts (drawn with ``rng``) onto a labelled frame.

    Args:
        image: ``(H, W, 3)`` uint8 target frame (not modified).
        gt: its labels in pixels.
        cutouts: objects to draw from.
        n: objects to paste (fewer when no admissible place is found in ``tries`` draws).
        max_overlap: largest share of a pasted box covered by an existing (or earlier pasted) box, and of an
            existing box covered by the pasted one.
        scale_jitter: the object's size is multiplied by a uniform draw in ``[1 - j, 1 + j]``.
        blend_px: Gaussian feathering of the mask's edge (pixels).

    Returns:
        ``(new image, labels with the pasted boxes appended, objects pasted)``.
    """
    import cv2

    out = image.copy()
    h_img, w_img = out.shape[:2]
    boxes = [np.asarray(gt.xyxy, np.float64).reshape(-1, 4)]
    cids = [np.asarray(gt.class_id, np.int64)]
    pasted = 0
    for _ in range(n):
        if not cutouts:
            break
        cut = cutouts[int(rng.integers(len(cutouts)))]
        s = float(rng.uniform(1.0 - scale_jitter, 1.0 + scale_jitter))
        h0, w0 = cut.pixels.shape[:2]
        w, h = max(MIN_SIDE, round(w0 * s)), max(MIN_SIDE, round(h0 * s))
        if w >= w_img or h >= h_img:
            continue
        existing = np.concatenate(boxes)
        placed = None
        for _t in range(tries):
            x, y = int(rng.integers(0, w_img - w + 1)), int(rng.integers(0, h_img - h + 1))
            cand = np.array([[x, y, x + w, y + h]], np.float64)
            if len(existing):
                inter = _intersection(cand, existing)[0]
                area_e = (existing[:, 2] - existing[:, 0]) * (existing[:, 3] - existing[:, 1])
                if (inter > max_overlap * w * h).any() or (inter > max_overlap * np.maximum(area_e, 1e-9)).any():
                    continue
            placed = (x, y)
            break
        if placed is None:
            continue
        x, y = placed
        pix = cv2.resize(cut.pixels, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        alpha = _feather(cv2.resize(cut.mask, (w, h), interpolation=cv2.INTER_LINEAR), blend_px)[..., None]
        region = out[y : y + h, x : x + w].astype(np.float32)
        out[y : y + h, x : x + w] = np.clip(alpha * pix + (1.0 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
        boxes.append(np.array([[x, y, x + w, y + h]], np.float64))
        cids.append(np.array([cut.class_id], np.int64))
        pasted += 1
    xyxy = np.concatenate(boxes)
    labels = Detections(xyxy=xyxy, confidence=np.ones(len(xyxy)), class_id=np.concatenate(cids))
    return out, labels, pasted


def rare_classes(class_counts: Sequence[int], rare_share: float, named: Sequence[int] = ()) -> list[int]:
    """Class ids to paste: ``named`` when given, else the classes with boxes whose share of all boxes is below
    ``rare_share``."""
    if named:
        return sorted(set(int(c) for c in named))
    counts = np.asarray(class_counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return []
    return [int(k) for k in np.nonzero((counts > 0) & (counts / total < rare_share))[0]]


def _decode(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError("a train frame blob is not a decodable image")
    return img


def _encode(img: np.ndarray, ext: str) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext.lower() in ("jpg", "jpeg") else []
    ok, buf = cv2.imencode(f".{ext}", img, params)
    if not ok:
        raise DataError(f"cannot encode a synthetic frame as {ext}")
    return buf.tobytes()


def add_synthetic(store: Any, settings: Any, version_id: str) -> tuple[str, Any, dict[str, Any]]:
    """A new dataset version: ``version_id``'s real entries plus synthetic copy-paste train frames.

    Deterministic: the same version and ``training.copy_paste`` settings give the same frames, hence the same id.

    Returns:
        ``(version id, manifest, report)``; when no rare class or no object can be cut, the version itself.

    Raises:
        ConfigError: ``training.copy_paste.classes`` names a class that is not configured.
    """
    from detloop import datasets as ds

    cp = settings.training.copy_paste
    unknown = [c for c in cp.classes if c not in settings.classes]
    if unknown:
        raise ConfigError(f"training.copy_paste.classes: unknown class(es) {unknown}; configured: {settings.classes}")
    bucket = settings.s3.data_bucket
    manifest = ds.load_manifest(store, settings, version_id)
    if manifest.kind == "golden":
        raise DataError(f"dataset {version_id} is a golden version: never trained on, never given synthetic frames")
    real = [e for e in manifest.entries if not e.synthetic]
    train = [e for e in real if e.split == "train"]
    counts = np.zeros(len(settings.classes), np.int64)
    for e in train:
        if e.class_counts:
            counts += np.asarray(e.class_counts, np.int64)
    rare = rare_classes(counts, cp.rare_share, [settings.classes.index(c) for c in cp.classes])
    report: dict[str, Any] = {"base_version": version_id, "rare_classes": [settings.classes[k] for k in rare],
                              "synthetic_frames": 0, "pasted": {}, "masks_estimated": 0, "cutouts": 0}

    def load(e: Any) -> tuple[np.ndarray, Detections]:
        img = _decode(ds.get_blob(store, bucket, e.frame_sha, e.ext))
        txt = ds.get_blob(store, bucket, e.label_sha, "txt").decode()
        return img, Detections.from_yolo_txt(txt, e.width, e.height, num_classes=len(settings.classes))

    cutouts: list[Cutout] = []
    for e in train:
        if e.class_counts and any(e.class_counts[k] for k in rare):
            cutouts += cut_objects(*load(e), rare)
    report["cutouts"] = len(cutouts)
    report["masks_estimated"] = int(sum(c.estimated for c in cutouts))
    if not rare or not cutouts or not train:
        return version_id, manifest, report
    seed = int.from_bytes(hashlib.sha256(f"{version_id}|{cp.seed}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    n_syn = round(cp.synthetic_share * len(train))
    targets = [train[int(i)] for i in rng.integers(0, len(train), n_syn)]
    synthetic: list[Any] = []
    pasted: dict[str, int] = {}
    for i, e in enumerate(targets):
        img, gt = load(e)
        k = int(rng.integers(cp.objects_per_frame[0], cp.objects_per_frame[1] + 1))
        new, labels, n = paste_objects(img, gt, cutouts, rng, k, cp.max_overlap, cp.scale_jitter, cp.blend_px)
        if n == 0:
            continue
        for c in labels.class_id[len(gt):]:
            pasted[settings.classes[int(c)]] = pasted.get(settings.classes[int(c)], 0) + 1
        entry = ds.store_labelled_frame(
            store, bucket, _encode(new, e.ext), labels, width=e.width, height=e.height, classes=settings.classes,
            camera=e.camera, date=e.date, hour=e.hour, split="train", source=f"synthetic:{version_id}",
            key=f"synthetic/{e.frame_sha}/{i}", ext=e.ext)
        synthetic.append(replace(entry, synthetic=True))
    if not synthetic:
        return version_id, manifest, report
    by_sha = {e.frame_sha: e for e in real}
    for s in synthetic:
        by_sha.setdefault(s.frame_sha, s)
    out = ds.DatasetManifest(kind=manifest.kind, classes=manifest.classes,
                             entries=list(by_sha.values()), parent=version_id, rounds=manifest.rounds)
    vid = ds.save_manifest(store, settings, out, note=f"copy-paste of {report['rare_classes']} onto {version_id}")
    report.update(version=vid, synthetic_frames=len(synthetic), pasted=pasted)
    return vid, out, report

"""Pure, deterministic rendering of synthetic production frames (numpy + OpenCV).

A frame is a function of ``(world config, world seed, stream, camera, date, index, frames per day)``:
the same inputs give the same pixels and the same ground truth, on any machine. Rendering runs in
three steps:

1. plan objects in geometry space (scattered objects, one optional crowd of one class whose
   consecutive boxes overlap with IoU drawn from ``crowd.iou``, occluding bars);
2. rasterise the plan into an id mask and drop objects less visible than ``objects.min_visible``
   (so the truth never holds an object nobody could see);
3. draw the kept objects on the camera's static background, then apply the camera's photometric
   state (drift brightness/contrast, night dip, exposure jitter), sensor noise and optional blur.

Ground truth boxes are amodal (the full shape, also where an occluder hides part of it), in frame
pixels ``xyxy``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.world.config import BackgroundSpec, WorldConfig

PRODUCTION = "production"
SHIFT = 4  # sub-pixel bits of cv2 polygon drawing
_SCALE = float(1 << SHIFT)


def stream_seed(seed: int, *parts: Any) -> int:
    """A 64-bit seed from the world seed and any parts (stream, camera, date, index)."""
    h = hashlib.sha256("|".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "big")


@dataclass(frozen=True)
class Conditions:
    """The world's state for one camera on one date (after every drift that applies).

    Attributes:
        brightness: offset added to pixel values (0-255 scale).
        contrast: scale of pixel values around 128.
        class_probs: float64 ``(C,)`` probabilities of each class (config order of ``classes``).
        size_scale: multiplies object sizes.
        drifts: names of the drifts in force.
        colors: base BGR colour of each class (config order), after colour drifts.
    """

    brightness: float
    contrast: float
    class_probs: np.ndarray
    size_scale: float
    drifts: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] = ()


def conditions(cfg: WorldConfig, classes: list[str], camera: str, day: date) -> Conditions:
    """Combine the drifts that apply to ``camera`` on ``day`` (offsets add, scales multiply).

    A drift with ``ramp_days`` enters at its :meth:`~detloop.world.config.DriftSpec.strength` that day: offsets
    and class weights/colours interpolated linearly from the values before it, scales as ``scale ** strength``.
    """
    b, c, s = 0.0, 1.0, 1.0
    weights = {k: cfg.classes[k].weight for k in classes}
    colors = {k: tuple(cfg.classes[k].color) for k in classes}
    names = []
    for d in cfg.drift:
        f = d.strength(camera, day)
        if f <= 0.0:
            continue
        names.append(d.name)
        if f >= 1.0:  # full size: exactly the step's arithmetic (a world without ramps renders as before)
            b += d.brightness
            c *= d.contrast
            s *= d.size_scale
            weights.update({k: v for k, v in d.class_weights.items() if k in weights})
            colors.update({k: tuple(v) for k, v in d.class_colors.items() if k in colors})
            continue
        b += f * d.brightness
        c *= d.contrast**f
        s *= d.size_scale**f
        weights.update({k: (1 - f) * weights[k] + f * v for k, v in d.class_weights.items() if k in weights})
        colors.update({k: tuple(round((1 - f) * a + f * n) for a, n in zip(colors[k], v, strict=True))
                       for k, v in d.class_colors.items() if k in colors})
    w = np.array([weights[k] for k in classes], dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    return Conditions(b, c, w / w.sum(), s, tuple(names), tuple(colors[k] for k in classes))  # type: ignore[misc]


@dataclass
class WorldFrame:
    """One rendered frame and its ground truth.

    Attributes:
        image: uint8 ``(H, W, 3)`` BGR.
        truth: boxes in frame pixels; ``truth.data`` holds ``crowd`` (int, -1 = scattered),
            ``anchor`` (index of the box a crowd member was placed against, -1 none) and
            ``visible`` (share of the shape's pixels not hidden).
        camera: camera id.
        day: capture date.
        frame_id: ``<HHMMSS>-<index:04d>``.
        hour: hour of day (0-23).
        meta: conditions and nuisance draws (for reports).
    """

    image: np.ndarray
    truth: Detections
    camera: str
    day: date
    frame_id: str
    hour: int
    meta: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Static per-camera backgrounds and the noise bank
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def camera_background(spec: BackgroundSpec, width: int, height: int, seed: int) -> np.ndarray:
    """The static background of a camera: uint8 ``(H, W, 3)`` BGR (read-only, cached)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    a = math.radians(spec.angle_deg)
    proj = (xx - width / 2) * math.cos(a) + (yy - height / 2) * math.sin(a)
    t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    ca, cb = np.array(spec.color_a, np.float32), np.array(spec.color_b, np.float32)
    img = ca[None, None, :] * (1 - t[..., None]) + cb[None, None, :] * t[..., None]
    if spec.blotches:
        low = np.zeros((max(2, height // 8), max(2, width // 8)), np.float32)
        lh, lw = low.shape
        for _ in range(spec.blotches):
            cx, cy = rng.uniform(0, lw), rng.uniform(0, lh)
            r = rng.uniform(0.08, 0.3) * max(lw, lh)
            sign = rng.choice([-1.0, 1.0])
            ly, lx = np.mgrid[0:lh, 0:lw]
            low += sign * np.exp(-((lx - cx) ** 2 + (ly - cy) ** 2) / (2 * r * r)).astype(np.float32)
        img += cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)[..., None] * spec.blotch_strength
    if spec.texture:
        tex = rng.normal(0, spec.texture, (height, width, 1)).astype(np.float32)
        img += cv2.GaussianBlur(tex, (0, 0), 1.2)[..., None] * 1.5
    out = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(spec.clutter):  # muted, desaturated distractors: lines and rectangle outlines
        g = int(rng.uniform(40, 200))
        col = (g + int(rng.integers(-12, 12)), g + int(rng.integers(-12, 12)), g)
        p1 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        p2 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        if rng.random() < 0.5:
            cv2.line(out, p1, p2, col, int(rng.integers(2, 6)), cv2.LINE_AA)
        else:
            cv2.rectangle(out, p1, p2, col, int(rng.integers(2, 5)))
    out.setflags(write=False)
    return out


@lru_cache(maxsize=4)
def noise_bank(width: int, height: int) -> np.ndarray:
    """uint8 ``(2H, 2W, 3)`` Gaussian noise centred on 128 with std 32 (fixed seed, cached)."""
    rng = np.random.default_rng(12345)
    bank = np.clip(rng.normal(128, 32, (2 * height, 2 * width, 3)), 0, 255).astype(np.uint8)
    bank.setflags(write=False)
    return bank


# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------
def _unit_polygon(shape: str, theta: float) -> np.ndarray | None:
    """Vertices ``(K, 2)`` of a rotated shape around (0, 0), scaled so its bounding box's larger side is 1."""
    if shape == "square":
        ang = theta + np.pi / 4 + np.arange(4) * np.pi / 2
        v = np.stack([np.cos(ang), np.sin(ang)], 1)
    elif shape == "triangle":
        ang = theta - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        v = np.stack([np.cos(ang), np.sin(ang)], 1)
    elif shape == "star":
        ang = theta - np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        v = np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
    else:
        return None
    ext = (v.max(0) - v.min(0)).max()
    v = v - (v.max(0) + v.min(0)) / 2
    return v / ext


@dataclass
class _Obj:
    cls: int
    shape: str
    cx: float
    cy: float
    size: float
    theta: float
    color: tuple[int, int, int]
    crowd: int = -1
    anchor: int = -1

    def __post_init__(self) -> None:
        self._unit = _unit_polygon(self.shape, self.theta)
        if self._unit is None:
            self._lo, self._hi = (-0.5, -0.5), (0.5, 0.5)
        else:
            lo, hi = self._unit.min(0), self._unit.max(0)
            self._lo, self._hi = (float(lo[0]), float(lo[1])), (float(hi[0]), float(hi[1]))

    def polygon(self) -> np.ndarray | None:
        return None if self._unit is None else self._unit * self.size + np.array([self.cx, self.cy])

    def box(self) -> tuple[float, float, float, float]:
        s = self.size
        return (self.cx + self._lo[0] * s, self.cy + self._lo[1] * s, self.cx + self._hi[0] * s, self.cy + self._hi[1] * s)

    def box_wh(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box()
        return x2 - x1, y2 - y1

    def draw(self, img: np.ndarray, color: Any, offset: tuple[float, float] = (0.0, 0.0)) -> None:
        import cv2

        ox, oy = offset
        if self.shape in ("disc", "ring"):
            r = self.size / 2
            c = (round((self.cx - ox) * _SCALE), round((self.cy - oy) * _SCALE))
            if self.shape == "disc":
                cv2.circle(img, c, round(r * _SCALE), color, -1, cv2.LINE_8, SHIFT)
            else:
                t = max(2.0, 0.3 * r)
                cv2.circle(img, c, round((r - t / 2) * _SCALE), color, max(1, round(t)), cv2.LINE_8, SHIFT)
            return
        p = self.polygon()
        pts = np.round((p - np.array([ox, oy])) * _SCALE).astype(np.int32)  # type: ignore[operator]
        cv2.fillPoly(img, [pts], color, cv2.LINE_8, SHIFT)


def _iou_offset(rng: np.random.Generator, w: float, h: float, iou: float) -> tuple[float, float]:
    """Centre offset (dx, dy) of an equal (w x h) box whose IoU with the first is ``iou``."""
    inter = iou * 2 * w * h / (1 + iou)
    dx_max = max(0.0, w - inter / h)
    dx = rng.uniform(0, dx_max)
    dy = h - inter / (w - dx)
    sx, sy = rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])
    if rng.random() < 0.5:  # symmetric in x and y
        return sx * dx, sy * dy
    # swap roles of axes: solve for dx given dy drawn first
    dy2 = rng.uniform(0, max(0.0, h - inter / w))
    dx2 = w - inter / (h - dy2)
    return sx * dx2, sy * dy2


def box_iou_xyxy(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------------
def frame_time(seed: int, stream: str, camera: str, day: date, index: int, frames_per_day: int) -> tuple[str, int]:
    """``(HHMMSS, hour)``: frame ``index`` of ``frames_per_day`` falls in its own slot of the day."""
    rng = np.random.default_rng(stream_seed(seed, "time", stream, camera, day.isoformat(), index))
    slot = 86400.0 / max(1, frames_per_day)
    sec = min(86399, int((index + rng.uniform(0.05, 0.95)) * slot))
    hh, mm, ss = sec // 3600, (sec % 3600) // 60, sec % 60
    return f"{hh:02d}{mm:02d}{ss:02d}", hh


def _class_color(
    rng: np.random.Generator, cfg: WorldConfig, classes: list[str], cls: int, palette: tuple[tuple[int, int, int], ...]
) -> tuple[int, int, int]:
    src = cls
    if rng.random() < cfg.objects.color_confusion and len(classes) > 1:
        src = int(rng.choice([i for i in range(len(classes)) if i != cls]))
    base = np.array(palette[src], np.float64)
    j = rng.uniform(-cfg.objects.color_jitter, cfg.objects.color_jitter, 3)
    c = np.clip(base + j, 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2])


def _sample_size(rng: np.random.Generator, cfg: WorldConfig, scale: float) -> float:
    lo, hi = cfg.objects.size_px.min, cfg.objects.size_px.max
    s = math.exp(rng.uniform(math.log(lo), math.log(hi))) * scale
    return max(cfg.objects.min_size_px, s)


def _plan(rng: np.random.Generator, cfg: WorldConfig, classes: list[str], cond: Conditions) -> tuple[list[_Obj], list[tuple[int, int, int, int]]]:
    """Objects (crowd first, then scattered on top) and occluding bars ``(x1, y1, x2, y2)``."""
    W, H = cfg.width, cfg.height
    objs: list[_Obj] = []
    probs = cond.class_probs

    if rng.random() < cfg.crowd.probability:
        cls = int(rng.choice(len(classes), p=probs))
        n = int(rng.integers(int(cfg.crowd.size.min), int(cfg.crowd.size.max) + 1))
        size = _sample_size(rng, cfg, cond.size_scale)
        theta = rng.uniform(0, 2 * np.pi)
        first = _Obj(cls, classes[cls], 0, 0, size, theta, _class_color(rng, cfg, classes, cls, cond.colors), crowd=0)
        w, h = first.box_wh()
        first.cx = rng.uniform(w, W - w)
        first.cy = rng.uniform(h, H - h)
        objs.append(first)
        prev = 0
        for _ in range(n - 1):
            iou = rng.uniform(cfg.crowd.iou.min, cfg.crowd.iou.max)
            dx, dy = _iou_offset(rng, w, h, iou)
            p = objs[prev]
            o = _Obj(cls, classes[cls], p.cx + dx, p.cy + dy, size, theta, _class_color(rng, cfg, classes, cls, cond.colors), 0, prev)
            x1, y1, x2, y2 = o.box()
            if x1 < 0 or y1 < 0 or x2 > W or y2 > H:
                continue
            objs.append(o)
            prev = len(objs) - 1

    n = int(rng.integers(int(cfg.objects.count.min), int(cfg.objects.count.max) + 1))
    for _ in range(n):
        cls = int(rng.choice(len(classes), p=probs))
        size = _sample_size(rng, cfg, cond.size_scale)
        o = _Obj(cls, classes[cls], 0, 0, size, rng.uniform(0, 2 * np.pi), _class_color(rng, cfg, classes, cls, cond.colors))
        w, h = o.box_wh()
        o.cx = rng.uniform(w / 2 + 1, W - w / 2 - 1)
        o.cy = rng.uniform(h / 2 + 1, H - h / 2 - 1)
        objs.append(o)

    bars: list[tuple[int, int, int, int]] = []
    if objs and rng.random() < cfg.nuisance.occluder_probability:
        k = int(rng.integers(int(cfg.nuisance.occluders.min), int(cfg.nuisance.occluders.max) + 1))
        for _ in range(k):
            o = objs[int(rng.integers(len(objs)))]
            x1, y1, x2, y2 = o.box()
            f = rng.uniform(cfg.nuisance.occlusion.min, cfg.nuisance.occlusion.max)
            ext = rng.uniform(20, 200)
            if rng.random() < 0.5:  # vertical pole over the left or right part
                t = f * (x2 - x1)
                bx1 = x1 if rng.random() < 0.5 else x2 - t
                bars.append((int(bx1), int(max(0, y1 - ext)), math.ceil(bx1 + t), int(min(H, y2 + ext))))
            else:  # horizontal beam over the top or bottom part
                t = f * (y2 - y1)
                by1 = y1 if rng.random() < 0.5 else y2 - t
                bars.append((int(max(0, x1 - ext)), int(by1), int(min(W, x2 + ext)), math.ceil(by1 + t)))
    return objs, bars


def _visibility(objs: list[_Obj], bars: list[tuple[int, int, int, int]], W: int, H: int) -> np.ndarray:
    """float ``(N,)``: share of each object's own pixels still visible after later objects and bars."""
    import cv2

    if len(objs) > 254:
        raise ValueError(f"at most 254 objects per frame, got {len(objs)}")
    mask = np.zeros((H, W), np.uint8)
    own = np.zeros(len(objs))
    for i, o in enumerate(objs):
        x1, y1, x2, y2 = o.box()
        ox, oy = math.floor(x1) - 1, math.floor(y1) - 1
        local = np.zeros((math.ceil(y2) - oy + 2, math.ceil(x2) - ox + 2), np.uint8)
        o.draw(local, 1, (ox, oy))
        own[i] = local.sum()
        o.draw(mask, i + 1)
    for b in bars:
        cv2.rectangle(mask, (b[0], b[1]), (b[2] - 1, b[3] - 1), 255, -1)
    counts = np.bincount(mask.ravel(), minlength=256)[1 : len(objs) + 1]
    return np.where(own > 0, counts / np.maximum(own, 1), 0.0)


def render_frame(
    cfg: WorldConfig,
    classes: list[str],
    camera: str,
    day: date,
    index: int,
    frames_per_day: int,
    seed: int = 0,
    stream: str = PRODUCTION,
) -> WorldFrame:
    """Render frame ``index`` of ``camera`` on ``day`` (deterministic in every argument).

    Args:
        cfg: world parameters.
        classes: class names in settings order (class ids of the truth index this list).
        camera: camera id (must be in ``cfg.cameras``).
        day: capture date (drifts are resolved from it).
        index: frame number within the camera-day (0-based).
        frames_per_day: frames of this camera on this day (spreads capture times over the day).
        seed: world seed.
        stream: ``production``, ``seed``, ``golden``, ...: independent random streams.
    """
    import cv2

    cam = cfg.camera(camera)
    W, H = cfg.width, cfg.height
    cond = conditions(cfg, classes, camera, day)
    hhmmss, hour = frame_time(seed, stream, camera, day, index, frames_per_day)
    rng = np.random.default_rng(stream_seed(seed, stream, camera, day.isoformat(), index))

    objs, bars = _plan(rng, cfg, classes, cond)
    vis = _visibility(objs, bars, W, H) if objs else np.zeros(0)
    keep = [i for i in range(len(objs)) if vis[i] >= cfg.objects.min_visible]
    if len(keep) < len(objs):  # dropping hidden objects reveals others: recompute on the kept set
        remap = {old: new for new, old in enumerate(keep)}
        kept = []
        for i in keep:
            o = objs[i]
            o.anchor = remap.get(o.anchor, -1)
            kept.append(o)
        objs = kept
        vis = _visibility(objs, bars, W, H) if objs else np.zeros(0)

    img = camera_background(cam.background, W, H, stream_seed(seed, "background", camera)).copy()
    for o in objs:
        o.draw(img, o.color)
    for b in bars:
        g = int(rng.uniform(60, 170))
        cv2.rectangle(img, (b[0], b[1]), (b[2] - 1, b[3] - 1), (g, g, g + int(rng.integers(-10, 10))), -1)

    # photometric state: drift + night dip + exposure jitter, then noise (saturating uint8 arithmetic)
    night = (1 + math.cos(2 * math.pi * (hour + 0.5 - 2) / 24)) / 2  # 1 at 02:00, 0 at 14:00
    contrast = cond.contrast * (1 - 0.3 * cfg.nuisance.day_night * night)
    brightness = cond.brightness - cfg.nuisance.day_night * 160 * night
    brightness += rng.uniform(-cfg.nuisance.exposure_jitter, cfg.nuisance.exposure_jitter)
    sigma = cfg.nuisance.noise_sigma / 32.0
    bank = noise_bank(W, H)
    oy, ox = int(rng.integers(0, H)), int(rng.integers(0, W))
    noise = bank[oy : oy + H, ox : ox + W]
    gamma = 128 * (1 - contrast) + brightness - 128 * sigma
    img = cv2.addWeighted(img, contrast, noise, sigma, gamma)
    blur = 0.0
    if rng.random() < cfg.nuisance.blur_probability:
        blur = float(rng.uniform(cfg.nuisance.blur_sigma.min, cfg.nuisance.blur_sigma.max))
        img = cv2.GaussianBlur(img, (0, 0), blur)

    if objs:
        xyxy = np.array([o.box() for o in objs], np.float64)
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, W)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, H)
        truth = Detections(
            xyxy=xyxy,
            confidence=np.ones(len(objs)),
            class_id=np.array([o.cls for o in objs]),
            data={
                "crowd": np.array([o.crowd for o in objs], np.int64),
                "anchor": np.array([o.anchor for o in objs], np.int64),
                "visible": np.round(vis, 3),
            },
        )
    else:
        truth = Detections(
            xyxy=np.zeros((0, 4)), confidence=np.zeros(0), class_id=np.zeros(0, np.int64),
            data={"crowd": np.zeros(0, np.int64), "anchor": np.zeros(0, np.int64), "visible": np.zeros(0)},
        )
    meta = {
        "drifts": list(cond.drifts),
        "brightness": round(brightness, 2),
        "contrast": round(contrast, 4),
        "blur_sigma": round(blur, 3),
        "occluders": len(bars),
    }
    return WorldFrame(img, truth, camera, day, f"{hhmmss}-{index:04d}", hour, meta)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR uint8 image."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def truth_to_json(frame: WorldFrame, classes: list[str], key: str = "") -> dict[str, Any]:
    """Ground truth as plain JSON: pixel boxes and class names (plus crowd/visibility per box)."""
    t = frame.truth
    return {
        "key": key,
        "camera": frame.camera,
        "date": frame.day.isoformat(),
        "frame_id": frame.frame_id,
        "width": int(frame.image.shape[1]),
        "height": int(frame.image.shape[0]),
        "classes": list(classes),
        "boxes": [
            {
                "xyxy": [round(float(v), 2) for v in t.xyxy[i]],
                "class": classes[int(t.class_id[i])],
                "crowd": int(t.data["crowd"][i]),
                "visible": float(t.data["visible"][i]),
            }
            for i in range(len(t))
        ],
        "conditions": frame.meta,
    }


def truth_from_json(d: dict[str, Any], classes: list[str]) -> Detections:
    """Detections (class ids in ``classes`` order) from :func:`truth_to_json` output.

    Raises:
        detloop.detections.UnknownLabelsError: a box names a class outside ``classes``.
    """
    from detloop.detections import UnknownLabelsError

    boxes = d.get("boxes", [])
    index = {c: i for i, c in enumerate(classes)}
    unknown = [b["class"] for b in boxes if b["class"] not in index]
    if unknown:
        raise UnknownLabelsError(unknown, classes)
    if not boxes:
        return Detections.empty()
    return Detections(
        xyxy=np.array([b["xyxy"] for b in boxes], np.float64),
        confidence=np.ones(len(boxes)),
        class_id=np.array([index[b["class"]] for b in boxes]),
        data={
            "crowd": np.array([b.get("crowd", -1) for b in boxes], np.int64),
            "visible": np.array([b.get("visible", 1.0) for b in boxes], np.float64),
        },
    )

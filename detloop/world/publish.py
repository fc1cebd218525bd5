"""Publish the synthetic world to S3: production frames, oracle truth, the seed and golden versions.

- Production frames: ``<production_prefix>camera=<id>/date=<YYYY-MM-DD>/<HHMMSS>-<nnnn>.jpg`` in the
  production bucket (``frames/`` by default), ``frames_per_day`` per active camera per day.
- Ground truth: ``truth/<production key>.json`` in the oracle bucket (pixel boxes + class names),
  read only by the simulated annotator (:func:`oracle_truth`) and the benchmarks.
- Seed and golden sets: labelled dataset versions (``detloop.datasets``) rendered from their own random
  streams (``seed`` / ``golden``), so their frames never equal a production frame.

Everything is deterministic in (world config, world seed, arguments) and idempotent: re-publishing
skips keys that exist, and the seed/golden versions get the same id every time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from detloop.errors import DataError
from detloop.world.config import WorldConfig, load_world_config
from detloop.world.render import (
    PRODUCTION,
    encode_jpeg,
    frame_time,
    render_frame,
    stream_seed,
    truth_from_json,
    truth_to_json,
)

if TYPE_CHECKING:
    from detloop.clients.s3 import S3Store
    from detloop.detections import Detections
    from detloop.settings import Settings

TRUTH_PREFIX = "truth/"


def load_world(settings: Settings) -> WorldConfig:
    """The world config named by ``settings.world.config``, checked against ``settings.classes``."""
    cfg = load_world_config(settings.world_config_path())
    cfg.check_classes(list(settings.classes))
    return cfg


def frame_key(settings: Settings, camera: str, day: date, frame_id: str, ext: str = "jpg") -> str:
    """Production key of a frame."""
    return f"{settings.s3.production_prefix}camera={camera}/date={day.isoformat()}/{frame_id}.{ext}"


def truth_key(production_key: str) -> str:
    """Oracle key of a production frame's ground truth."""
    return f"{TRUTH_PREFIX}{production_key}.json"


@dataclass(frozen=True)
class PlannedFrame:
    camera: str
    day: date
    index: int
    frames_per_day: int
    frame_id: str
    hour: int


def plan_production(
    cfg: WorldConfig, seed: int, start: date, days: int, frames_per_day: int, cameras: list[str] | None = None
) -> Iterator[PlannedFrame]:
    """Frames ``frames_per_day`` per active camera per day, without rendering (keys are cheap)."""
    for d in range(days):
        day = start + timedelta(days=d)
        for cam in cfg.active_cameras(day):
            if cameras and cam not in cameras:
                continue
            for i in range(frames_per_day):
                hhmmss, hour = frame_time(seed, PRODUCTION, cam, day, i, frames_per_day)
                yield PlannedFrame(cam, day, i, frames_per_day, f"{hhmmss}-{i:04d}", hour)


@dataclass
class PublishReport:
    """What :func:`publish_world` did."""

    written: int = 0
    skipped: int = 0
    corrupt_keys: list[str] = field(default_factory=list)
    frames: int = 0
    boxes: int = 0
    bytes: int = 0
    seconds: float = 0.0
    cameras: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "written": self.written, "skipped": self.skipped, "corrupt_keys": self.corrupt_keys,
            "frames": self.frames, "boxes": self.boxes, "bytes": self.bytes,
            "seconds": round(self.seconds, 2), "cameras": self.cameras,
        }


def _existing(store: S3Store, bucket: str, prefix: str) -> set[str]:
    return {o.key for o in store.list(bucket, prefix)}


def publish_world(
    settings: Settings,
    start: date,
    days: int,
    frames_per_day: int,
    seed: int | None = None,
    corrupt: int = 0,
    cameras: list[str] | None = None,
    threads: int = 8,
    store: S3Store | None = None,
    progress: bool = False,
) -> PublishReport:
    """Render and upload production frames and their oracle truth (skips keys that exist).

    Args:
        settings: buckets, classes and the world config path.
        start: first date.
        days: number of consecutive dates.
        frames_per_day: frames per ACTIVE camera per day.
        seed: world seed (default ``settings.world.seed``).
        corrupt: extra broken objects to inject (zero-byte, truncated JPEG, random bytes, in turn)
            under frame-like keys ``<HHMMSS>-c<nnn>.jpg``; they get no truth. Listed in the report.
        cameras: restrict to these camera ids (default: all active).
        threads: parallel render + upload workers.
        store: S3 store (default one built from settings).
        progress: show a progress bar.

    Returns:
        counts of written and skipped frames, the corrupt keys, bytes and wall time.
    """
    from detloop.clients.s3 import S3Store

    if days < 1 or frames_per_day < 1:
        raise DataError(f"days and frames_per_day must be >= 1, got days={days}, frames_per_day={frames_per_day}")
    if corrupt < 0:
        raise DataError(f"corrupt must be >= 0, got {corrupt}")
    t0 = time.perf_counter()
    cfg = load_world(settings)
    seed = settings.world.seed if seed is None else seed
    store = store or S3Store(settings)
    known = {c.id for c in cfg.cameras}
    if cameras and set(cameras) - known:
        raise DataError(f"unknown cameras {sorted(set(cameras) - known)}; world cameras are {sorted(known)}")
    prod, oracle = settings.s3.production_bucket, settings.s3.oracle_bucket
    store.ensure_bucket(prod)
    store.ensure_bucket(oracle)
    classes = list(settings.classes)
    plan = list(plan_production(cfg, seed, start, days, frames_per_day, cameras))
    report = PublishReport(cameras=sorted({p.camera for p in plan}))
    cams = report.cameras
    have: set[str] = set()
    have_truth: set[str] = set()
    for cam in cams:
        have |= _existing(store, prod, f"{settings.s3.production_prefix}camera={cam}/")
        have_truth |= _existing(store, oracle, f"{TRUTH_PREFIX}{settings.s3.production_prefix}camera={cam}/")
    todo = []
    for p in plan:
        key = frame_key(settings, p.camera, p.day, p.frame_id)
        if key in have and truth_key(key) in have_truth:
            report.skipped += 1
        else:
            todo.append((p, key))
    report.frames = len(plan)

    def work(item: tuple[PlannedFrame, str]) -> tuple[int, int]:
        p, key = item
        f = render_frame(cfg, classes, p.camera, p.day, p.index, p.frames_per_day, seed, PRODUCTION)
        body = encode_jpeg(f.image, cfg.jpeg_quality)
        # truth first: a frame that exists always has its truth
        store.put_json(oracle, truth_key(key), truth_to_json(f, classes, key))
        store.put_bytes(prod, key, body, content_type="image/jpeg")
        return len(body), len(f.truth)

    bar = _progress(len(todo), "publish frames", progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for fut in as_completed([pool.submit(work, it) for it in todo]):
                n_bytes, n_boxes = fut.result()
                report.written += 1
                report.bytes += n_bytes
                report.boxes += n_boxes
                bar.update(1)
    finally:
        bar.close()
    if corrupt:
        report.corrupt_keys = _publish_corrupt(store, settings, cfg, seed, plan, corrupt, have)
    report.seconds = time.perf_counter() - t0
    return report


def _publish_corrupt(
    store: S3Store, settings: Settings, cfg: WorldConfig, seed: int, plan: list[PlannedFrame], n: int, have: set[str]
) -> list[str]:
    """Zero-byte, truncated and garbage objects under frame-like keys (deterministic)."""
    if not plan:
        return []
    rng = np.random.default_rng(stream_seed(seed, "corrupt", plan[0].day.isoformat(), len(plan)))
    keys = []
    for j in range(n):
        p = plan[int(rng.integers(len(plan)))]
        sec = int(rng.integers(0, 86400))
        fid = f"{sec // 3600:02d}{(sec % 3600) // 60:02d}{sec % 60:02d}-c{j:03d}"
        key = frame_key(settings, p.camera, p.day, fid)
        kind = j % 3
        if key not in have:
            if kind == 0:
                body = b""
            elif kind == 1:
                f = render_frame(cfg, list(settings.classes), p.camera, p.day, p.index, p.frames_per_day, seed)
                full = encode_jpeg(f.image, cfg.jpeg_quality)
                body = full[: len(full) * 2 // 5]
            else:
                body = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
            store.put_bytes(settings.s3.production_bucket, key, body, content_type="image/jpeg")
        keys.append(key)
    return keys


def oracle_truth(store: S3Store, settings: Settings, key: str) -> Detections:
    """Ground truth of a production frame (class ids in ``settings.classes`` order).

    Raises:
        DataError: no truth exists for ``key`` (e.g. a corrupt object or a frame the world did not write).
    """
    tkey = truth_key(key)
    bucket = settings.s3.oracle_bucket
    if not store.exists(bucket, tkey):
        raise DataError(f"no ground truth for {key} (s3://{bucket}/{tkey} does not exist)")
    return truth_from_json(store.get_json(bucket, tkey), list(settings.classes))


# ------------------------------------------------------------------------------------------------
# Labelled sets: seed and golden dataset versions
# ------------------------------------------------------------------------------------------------
def plan_stream(cfg: WorldConfig, seed: int, stream: str, start: date, days: int, frames: int) -> list[PlannedFrame]:
    """``frames`` frames of a labelled stream: each on a random date of the range and a random active camera.

    Index ``i`` gets the i-th slot of the day (``frames_per_day = frames``), so capture hours spread over
    the whole day.
    """
    rng = np.random.default_rng(stream_seed(seed, "plan", stream, start.isoformat(), days, frames))
    out = []
    for i in range(frames):
        day = start + timedelta(days=int(rng.integers(days)))
        active = cfg.active_cameras(day)
        if not active:
            raise DataError(f"world: no camera is active on {day} (stream {stream})")
        cam = active[int(rng.integers(len(active)))]
        hhmmss, hour = frame_time(seed, stream, cam, day, i, frames)
        out.append(PlannedFrame(cam, day, i, frames, f"{hhmmss}-{i:04d}", hour))
    return out


def publish_labelled_set(
    settings: Settings,
    kind: str,
    seed: int | None = None,
    frames: int | None = None,
    threads: int = 8,
    store: S3Store | None = None,
    progress: bool = False,
) -> str:
    """Render the ``seed`` or ``golden`` set, store frames and labels as blobs, write its version.

    Seed entries are split train/val by :func:`detloop.datasets.assign_split` over (camera, date, hour)
    with ``seed_set.val_share``; golden entries are all ``golden``. Returns the version id (the same on
    every run with the same config, seed and ``frames``).
    """
    from detloop import datasets as ds
    from detloop.clients.s3 import S3Store

    if kind not in ("seed", "golden"):
        raise DataError(f"kind must be 'seed' or 'golden', got {kind!r}")
    cfg = load_world(settings)
    seed = settings.world.seed if seed is None else seed
    store = store or S3Store(settings)
    store.ensure_bucket(settings.s3.data_bucket)
    spec = cfg.seed_set if kind == "seed" else cfg.golden_set
    n = spec.frames if frames is None else frames
    if n < 1:
        raise DataError(f"frames must be >= 1, got {n}")
    classes = list(settings.classes)
    plan = plan_stream(cfg, seed, kind, spec.start, spec.days, n)

    def work(p: PlannedFrame) -> ds.DatasetEntry:
        f = render_frame(cfg, classes, p.camera, p.day, p.index, p.frames_per_day, seed, kind)
        body = encode_jpeg(f.image, cfg.jpeg_quality)
        split = "golden" if kind == "golden" else ds.assign_split(p.camera, p.day.isoformat(), p.hour, spec.val_share)
        return ds.store_labelled_frame(
            store, settings.s3.data_bucket, body, f.truth, width=cfg.width, height=cfg.height, classes=classes,
            camera=p.camera, date=p.day.isoformat(), hour=p.hour, split=split, source=kind,
            key=f"world/{kind}/camera={p.camera}/date={p.day.isoformat()}/{p.frame_id}.jpg",
        )

    entries = []
    bar = _progress(len(plan), f"publish {kind}", progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for e in pool.map(work, plan):
                entries.append(e)
                bar.update(1)
    finally:
        bar.close()
    manifest = ds.build_version(kind, classes, entries)
    return ds.save_manifest(store, settings, manifest, note=f"world {kind} set, seed {seed}, {n} frames")


def publish_seed(settings: Settings, **kw: Any) -> str:
    """The bootstrap ``seed`` version (see :func:`publish_labelled_set`)."""
    return publish_labelled_set(settings, "seed", **kw)


def publish_golden(settings: Settings, **kw: Any) -> str:
    """The ``golden`` evaluation version (see :func:`publish_labelled_set`)."""
    return publish_labelled_set(settings, "golden", **kw)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame")

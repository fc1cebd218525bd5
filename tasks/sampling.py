"""Production sampling: pick candidate frames for a window before ``as_of``.

Pure parts (tested without services): the window, key filtering, stratified ordering with per-camera
quotas and per-camera-per-day caps, image validation (zero-byte / non-image / truncated / corrupt),
a 64-bit difference hash in numpy and greedy near-duplicate removal by Hamming distance.

Thin S3 parts: listing the production bucket by ``camera=/date=`` prefixes, fetching bytes in a thread
pool, and writing the sample and quarantine manifests under ``runs/<run_id>/`` of the data bucket.

Window: ``[as_of - window_days, as_of)`` by the ``date=`` in the key (``as_of`` itself excluded).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from detloop.contracts import FrameRef, Quarantined, parse_frame_key
from detloop.errors import NotFound
from detloop.preprocess import (  # noqa: F401  (validation lives in the core)
    DEFAULT_MAX_PIXELS,
    check_image_bytes,
    decode_image,
    jpeg_size,
)
from detloop.settings import SamplingSettings, Settings


# --------------------------------------------------------------------------------------------
# Window and keys
# --------------------------------------------------------------------------------------------
def window(as_of: date, window_days: int) -> tuple[date, date]:
    """``(start, end)`` of the sampling window: ``start = as_of - window_days``, ``end = as_of`` (exclusive)."""
    return as_of - timedelta(days=window_days), as_of


def window_dates(as_of: date, window_days: int, dates: Iterable[date] | None = None) -> list[date]:
    """Dates inside the window, oldest first, optionally restricted to ``dates``."""
    start, end = window(as_of, window_days)
    all_days = [start + timedelta(days=i) for i in range((end - start).days)]
    if dates is None:
        return all_days
    wanted = set(dates)
    return [d for d in all_days if d in wanted]


def camera_window_dates(as_of: date, window_days: int, cameras: Iterable[str], dates: Iterable[date] | None = None,
                        camera_dates: Mapping[str, Iterable[date]] | None = None) -> dict[str, list[date]]:
    """Each camera's dates inside the window: its own from ``camera_dates`` when named there (a drift round offers
    a re-asked camera its drifted days since its last round), else ``dates`` (None: every day)."""
    own = camera_dates or {}
    return {c: window_dates(as_of, window_days, own[c] if c in own else dates) for c in cameras}


def frames_in_window(
    objects: Iterable[Any],
    bucket: str,
    as_of: date,
    window_days: int,
    cameras: Sequence[str] | None = None,
    dates: Sequence[date] | None = None,
    camera_dates: Mapping[str, Sequence[date]] | None = None,
) -> list[FrameRef]:
    """Frame refs of listed objects (anything with ``key``, ``size``, ``etag``) inside the window.

    A camera named in ``camera_dates`` keeps its own dates instead of ``dates`` (:func:`camera_window_dates`).
    Keys that are not frames (``camera=<id>/date=<YYYY-MM-DD>/<id>.jpg|png``) are skipped.
    """
    days = set(window_dates(as_of, window_days, dates))
    named = camera_dates or {}
    own = {c: set(d) for c, d in camera_window_dates(as_of, window_days, named, camera_dates=named).items()}
    cams = set(cameras) if cameras else None
    out = []
    for o in objects:
        parsed = parse_frame_key(o.key)
        if parsed is None:
            continue
        cam, day, _ = parsed
        if day not in own.get(cam, days) or (cams is not None and cam not in cams):
            continue
        out.append(FrameRef(bucket=bucket, key=o.key, etag=o.etag, camera=cam, date=day.isoformat(), size=o.size))
    return out


# --------------------------------------------------------------------------------------------
# Stratified ordering
# --------------------------------------------------------------------------------------------
def stratified_order(
    refs: Sequence[FrameRef],
    per_camera_quota: int | None,
    max_per_camera_per_day: int | None,
    seed: int,
) -> list[FrameRef]:
    """Priority order of candidates: balanced over cameras, then over days inside a camera.

    Frames of one (camera, day) are shuffled (seeded) and capped at ``max_per_camera_per_day``; a
    camera's frames interleave its days round-robin and stop at ``per_camera_quota``; cameras then
    interleave round-robin. Taking a prefix of the result gives a stratified sample of that size.
    Deterministic for a seed, independent of listing order.
    """
    rng = random.Random(seed)
    by_cam_day: dict[str, dict[str, list[FrameRef]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(refs, key=lambda r: r.key):
        by_cam_day[r.camera][r.date].append(r)
    per_cam: list[list[FrameRef]] = []
    for cam in sorted(by_cam_day):
        days = []
        for d in sorted(by_cam_day[cam]):
            lst = by_cam_day[cam][d]
            rng.shuffle(lst)
            days.append(lst[:max_per_camera_per_day] if max_per_camera_per_day else lst)
        seq = _round_robin(days)
        per_cam.append(seq[:per_camera_quota] if per_camera_quota else seq)
    return _round_robin(per_cam)


def _round_robin(lists: Sequence[Sequence[FrameRef]]) -> list[FrameRef]:
    out: list[FrameRef] = []
    longest = max((len(x) for x in lists), default=0)
    for i in range(longest):
        out.extend(x[i] for x in lists if i < len(x))
    return out


# --------------------------------------------------------------------------------------------
# Near-duplicates (image validation and decoding: detloop.preprocess)
# --------------------------------------------------------------------------------------------
def _area_resize(gray: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-average resize of a 2-D array in numpy (block means over near-equal bins)."""
    g = np.asarray(gray, np.float64)
    ys = np.linspace(0, g.shape[0], out_h + 1).astype(int)
    xs = np.linspace(0, g.shape[1], out_w + 1).astype(int)
    rows = np.add.reduceat(g, ys[:-1], axis=0) / np.diff(ys)[:, None]
    return np.add.reduceat(rows, xs[:-1], axis=1) / np.diff(xs)[None, :]


def dhash(image: np.ndarray, size: int = 16, margin: float = 4.0) -> np.ndarray:
    """Difference hash of ``size * size`` bits: area-resize to ``size x (size + 1)`` grey cells, bit = left
    cell brighter than its right neighbour by more than ``margin`` grey levels.

    The margin keeps flat regions (equal neighbours, common in fixed-camera frames) at stable 0 bits
    instead of bits decided by sensor noise or JPEG re-compression. ``size = 8`` is the classic 64-bit
    dHash; on fixed cameras it is dominated by the static background (frames with different objects
    differ by 0-2 bits in the synthetic world), hence the default 16 (256 bits).

    Args:
        image: ``(H, W)`` grey or ``(H, W, 3)`` colour array (any channel order), ``H, W >= 9``.
        size: grid side (bits = size * size).
        margin: grey levels (0-255 scale) a difference must exceed to set a bit.

    Returns:
        ``(ceil(size * size / 64),)`` uint64 words; near-identical frames differ in few bits.
    """
    g = np.asarray(image)
    if g.ndim == 3:
        g = g.astype(np.float64).mean(axis=2)
    small = _area_resize(g, size, size + 1)
    bits = (small[:, :-1] - small[:, 1:] > margin).reshape(-1)
    pad = (-len(bits)) % 64
    packed = np.packbits(np.concatenate([bits, np.zeros(pad, bool)]).astype(np.uint8))
    return packed.view(">u8").astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between hashes of W uint64 words.

    Args:
        a: ``(W,)`` one hash, or ``(N, W)``.
        b: ``(M, W)`` hashes (or ``(M,)`` for 64-bit hashes).

    Returns:
        ``(M,)`` distances of ``a`` to each row of ``b`` (``(N,)`` element-wise when both are ``(N, W)``).
    """
    a = np.asarray(a, np.uint64)
    b = np.asarray(b, np.uint64)
    if b.ndim == 1:
        b = b[:, None]
    if a.ndim == 0:
        a = a[None]
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1).astype(np.int64)


def near_duplicates(hashes: np.ndarray, groups: Sequence[str], threshold: int) -> np.ndarray:
    """Greedy near-duplicate removal in priority order, within each group (camera).

    A frame is a duplicate when its hash is within ``threshold`` bits of a frame kept earlier in the
    same group. ``threshold = 0`` removes exact hash matches only.

    Args:
        hashes: ``(N, W)`` (or ``(N,)`` 64-bit) uint64 dHashes, in priority order.
        groups: ``(N,)`` group of each frame.
        threshold: Hamming distance (0-64).

    Returns:
        ``(N,)`` int64: -1 for kept frames, else the index of the kept frame it duplicates.
    """
    hashes = np.asarray(hashes, np.uint64)
    if hashes.ndim == 1:
        hashes = hashes[:, None]
    dup_of = np.full(len(hashes), -1, np.int64)
    kept: dict[str, list[int]] = defaultdict(list)
    kept_h: dict[str, np.ndarray] = {}
    for i, g in enumerate(groups):
        idx = kept[g]
        if idx:
            d = hamming(hashes[i], kept_h[g][: len(idx)])
            j = int(np.argmin(d))
            if d[j] <= threshold:
                dup_of[i] = idx[j]
                continue
        idx.append(i)
        buf = kept_h.get(g)
        if buf is None or len(buf) < len(idx):
            nb = np.zeros((max(16, 2 * len(idx)), hashes.shape[1]), np.uint64)
            if buf is not None:
                nb[: len(buf)] = buf
            kept_h[g] = buf = nb
        buf[len(idx) - 1] = hashes[i]
    return dup_of


# --------------------------------------------------------------------------------------------
# The sample (thin S3 around the pure parts)
# --------------------------------------------------------------------------------------------
@dataclass
class SampleResult:
    """A round's sample.

    Attributes:
        frames: sampled frames in priority order (stratified).
        quarantined: unusable objects with reasons.
        duplicates: ``(key, key it duplicates)`` pairs removed as near-duplicates.
        stats: counts per step.
        window: ``(start, end)`` ISO dates (end exclusive).
        notes: user-facing lines (e.g. empty window).
        manifest_key / quarantine_key: where the manifests went (None when not written).
    """

    frames: list[FrameRef]
    quarantined: list[Quarantined]
    duplicates: list[tuple[str, str]]
    stats: dict[str, int]
    window: tuple[str, str]
    notes: list[str] = field(default_factory=list)
    manifest_key: str | None = None
    quarantine_key: str | None = None

    def manifest(self, as_of: date, settings: SamplingSettings) -> dict[str, Any]:
        return {
            "as_of": as_of.isoformat(),
            "window": {"start": self.window[0], "end_exclusive": self.window[1]},
            "sampling": settings.model_dump(mode="json"),
            "stats": self.stats,
            "notes": self.notes,
            "frames": [f.to_dict() for f in self.frames],
        }


NOT_A_FRAME = "not a frame (expected camera=<id>/date=<YYYY-MM-DD>/<frame id>.jpg, .jpeg or .png)"


def list_window(
    store: Any,
    settings: Settings,
    as_of: date,
    cameras: Sequence[str] | None = None,
    dates: Sequence[date] | None = None,
    camera_dates: Mapping[str, Sequence[date]] | None = None,
) -> tuple[list[FrameRef], list[Quarantined]]:
    """List production frames in the window, one ``camera=/date=`` prefix at a time (no full-bucket scan).

    Returns:
        ``(frames, strays)``: other objects under those prefixes (a ``.txt``, a ``.jpg.tmp``) are quarantined
        as :data:`NOT_A_FRAME` instead of being ignored silently.
    """
    bucket = settings.s3.production_bucket
    prefix = settings.s3.production_prefix
    cams = list(cameras) if cameras else list_cameras(store, bucket, prefix)
    wd = settings.sampling.window_days
    objs: list[Any] = []
    for cam, days in camera_window_dates(as_of, wd, cams, dates, camera_dates).items():
        for d in days:
            objs.extend(store.list(bucket, f"{prefix}camera={cam}/date={d.isoformat()}/"))
    strays = [Quarantined(bucket, o.key, NOT_A_FRAME) for o in objs if parse_frame_key(o.key) is None]
    return frames_in_window(objs, bucket, as_of, wd, cameras, dates, camera_dates), strays


def list_cameras(store: Any, bucket: str, prefix: str) -> list[str]:
    """Camera ids under ``<prefix>camera=<id>/`` (one delimiter listing)."""
    cams = []
    for p in store.list_prefixes(bucket, f"{prefix}camera="):
        p = p[len(prefix):].strip("/")
        if p.startswith("camera="):
            cams.append(p[len("camera="):])
    return sorted(cams)


def fetch_bytes(store: Any, refs: Sequence[FrameRef], threads: int = 8) -> list[bytes | NotFound]:
    """Download objects in a thread pool.

    An object that vanished since it was listed becomes its :class:`NotFound` (the caller quarantines it);
    a service failure (S3 down, access denied) raises: it is not the frame's fault.
    """
    from concurrent.futures import ThreadPoolExecutor

    def get(r: FrameRef) -> bytes | NotFound:
        try:
            return store.get_bytes(r.bucket, r.key)  # type: ignore[no-any-return]
        except NotFound as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        return list(ex.map(get, refs))


def sample(
    settings: Settings,
    as_of: date,
    store: Any,
    cameras: Sequence[str] | None = None,
    dates: Sequence[date] | None = None,
    run_id: str | None = None,
    threads: int = 8,
    dedup: bool = True,
    camera_dates: Mapping[str, Sequence[date]] | None = None,
) -> SampleResult:
    """Sample production frames for ``as_of``: list, stratify, validate, dedup, write manifests.

    Candidates are taken in stratified priority order in chunks; each chunk is downloaded, validated
    (bad objects -> quarantine with a reason), hashed and deduplicated against frames already kept
    of the same camera, until ``max_frames`` are kept or candidates run out.

    Args:
        settings: full settings (buckets, ``sampling``).
        as_of: end of the window (exclusive).
        store: the object store (:class:`~detloop.clients.protocols.ObjectStore`).
        cameras / dates: optional focus; ``camera_dates``: a named camera's own dates instead of ``dates``.
        run_id: when given, manifests go to ``runs/<run_id>/sample_manifest.json`` and
            ``runs/<run_id>/quarantine.json`` in the data bucket.
        threads: download threads.
        dedup: drop near-duplicates (False: measure the traffic as it is, e.g. for drift monitoring).

    Returns:
        :class:`SampleResult`; an empty window is a result with a note, not an error.
    """
    sp = settings.sampling
    start, end = window(as_of, sp.window_days)
    listed, strays = list_window(store, settings, as_of, cameras, dates, camera_dates)
    order = stratified_order(listed, sp.per_camera_quota, sp.max_per_camera_per_day, sp.seed)
    stats = {"listed": len(listed), "eligible": len(order), "downloaded": 0, "quarantined": 0,
             "duplicates": 0, "sampled": 0}
    kept: list[FrameRef] = []
    kept_hashes: list[np.ndarray] = []
    quarantined: list[Quarantined] = list(strays)
    dups: list[tuple[str, str]] = []
    pos = 0
    while len(kept) < sp.max_frames and pos < len(order):
        need = sp.max_frames - len(kept)
        chunk = order[pos : pos + max(32, int(need * 1.25))]
        pos += len(chunk)
        datas = fetch_bytes(store, chunk, threads)
        stats["downloaded"] += len(chunk)
        good: list[FrameRef] = []
        hashes: list[np.ndarray] = []
        for ref, data in zip(chunk, datas, strict=True):
            if isinstance(data, NotFound):
                quarantined.append(Quarantined(ref.bucket, ref.key, f"missing: {data}"))
                continue
            img, reason = decode_image(data, sp.max_image_pixels)
            if img is None:
                quarantined.append(Quarantined(ref.bucket, ref.key, str(reason)))
                continue
            ref.size = len(data)
            good.append(ref)
            hashes.append(dhash(img, sp.dedup_hash_size) if dedup else np.zeros(1, np.uint64))
        groups = [r.camera for r in kept] + [r.camera for r in good]
        if dedup:
            allh = np.array(kept_hashes + hashes, np.uint64).reshape(-1, (sp.dedup_hash_size**2 + 63) // 64)
            dup_of = near_duplicates(allh, groups, sp.dedup_hamming)
        else:
            dup_of = np.full(len(groups), -1)
        before = kept + good  # indices of dup_of refer to this list
        base = len(kept_hashes)
        for j, ref in enumerate(good):
            i = base + j
            if dup_of[i] >= 0:
                other = before[dup_of[i]]
                dups.append((ref.key, other.key))
            elif len(kept) < sp.max_frames:
                kept.append(ref)
                kept_hashes.append(hashes[j])
    stats.update(quarantined=len(quarantined), duplicates=len(dups), sampled=len(kept))
    notes = []
    if not listed:
        scope = f" for cameras {list(cameras)}" if cameras else ""
        notes.append(
            f"empty window: no frames in s3://{settings.s3.production_bucket}/{settings.s3.production_prefix} "
            f"dated {start}..{end - timedelta(days=1)}{scope}; nothing to select"
        )
    res = SampleResult(kept, quarantined, dups, stats, (start.isoformat(), end.isoformat()), notes)
    if run_id:
        write_manifests(store, settings, run_id, as_of, res)
    if quarantined:
        where = (f"s3://{settings.s3.data_bucket}/{res.quarantine_key}" if res.quarantine_key
                 else "not written (a look-only run)")
        reasons = ", ".join(f"{k} ({n})" for k, n in Counter(q.reason.split(" (")[0] for q in quarantined).most_common(3))
        notes.append(f"{len(quarantined)} object(s) quarantined: {reasons}; the quarantine manifest: {where}")
    return res


def write_manifests(store: Any, settings: Settings, run_id: str, as_of: date, res: SampleResult) -> None:
    """``runs/<run_id>/sample_manifest.json`` and ``runs/<run_id>/quarantine.json`` in the data bucket."""
    bucket = settings.s3.data_bucket
    store.ensure_bucket(bucket)
    res.manifest_key = f"runs/{run_id}/sample_manifest.json"
    res.quarantine_key = f"runs/{run_id}/quarantine.json"
    store.put_json(bucket, res.manifest_key, res.manifest(as_of, settings.sampling))
    store.put_json(bucket, res.quarantine_key, {"as_of": as_of.isoformat(),
                                                 "quarantined": [q.to_dict() for q in res.quarantined]})


def read_manifest(store: Any, settings: Settings, key: str) -> list[FrameRef]:
    """Frames of a sample manifest written by :func:`write_manifests`."""
    data = store.get_json(settings.s3.data_bucket, key)
    return [FrameRef.from_dict(d) for d in data.get("frames", [])]

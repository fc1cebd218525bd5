"""Immutable, content-addressed dataset versions stored in S3.

Layout in the data bucket (see :mod:`detloop.contracts`):

- ``blobs/sha256/<hh>/<sha256>.<ext>``: frames (``jpg``/``png``) and YOLO txt labels (``txt``), keyed by
  the sha256 of their bytes; an upload is skipped when the blob exists.
- ``datasets/<version_id>/manifest.json``: one :class:`DatasetManifest`. The version id is the first
  16 hex digits of the sha256 of the manifest's canonical JSON (sorted keys, compact separators, no
  timestamps), so writing the same content twice gives the same id and no new object.
- ``datasets/index/<kind>/<version_id>.json``: a small listing entry (counts, parent, ``created_at``)
  used by :func:`list_versions`; not part of the id.

Rules that every version obeys:

- Entries are sorted by ``frame_sha``; one entry per frame.
- A version built from a parent keeps all of the parent's entries and appends the new ones. When a new
  entry has the same ``frame_sha`` as an existing one (the same frame labelled again), the NEWEST entry
  wins: its label, split, source and flags replace the old ones (relabelling shows in :func:`diff`).
- Splits are grouped and stable: :func:`assign_split` hashes ``(camera, date, hour)`` with a salt, so
  near-identical consecutive frames of one camera-hour never straddle train and val, and a frame keeps
  its split in every later version.
- Golden entries (split ``golden``) are never ``train``. Control-arm entries are in split ``control`` (never
  trained on) until they retire: once they have served the live-accuracy window of their round, a later
  version moves them to ``train``/``val`` (``arm`` stays ``control``; :func:`tasks.round_version.retire_controls`).
- Synthetic entries (``synthetic=True``, :mod:`tasks.copy_paste`) are ``train`` only: no evaluation slice,
  golden set or control arm ever holds one.

:func:`materialize` writes a local Ultralytics dataset from a version (cached under
``<data_dir>/cache/datasets/<id>/``; each file whole or absent, a full disk is one line: :mod:`detloop.localfs`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from detloop import localfs
from detloop.errors import DataError

if TYPE_CHECKING:
    from detloop.clients.s3 import S3Store
    from detloop.detections import Detections
    from detloop.settings import Settings

Split = Literal["train", "val", "golden", "control"]
Kind = Literal["seed", "train", "golden"]
SPLITS: tuple[str, ...] = ("train", "val", "golden", "control")
KINDS: tuple[str, ...] = ("seed", "train", "golden")
BLOB_PREFIX = "blobs/sha256"
DATASET_PREFIX = "datasets"
INDEX_PREFIX = "datasets/index"
ID_LEN = 16


# ------------------------------------------------------------------------------------------------
# Content-addressed blobs
# ------------------------------------------------------------------------------------------------
def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def blob_key(sha: str, ext: str) -> str:
    """``blobs/sha256/<first 2 hex>/<sha>.<ext>``."""
    return f"{BLOB_PREFIX}/{sha[:2]}/{sha}.{ext.lstrip('.')}"


def put_blob(store: S3Store, bucket: str, data: bytes, ext: str) -> str:
    """Store ``data`` under its sha256 (skipped when it exists); returns the sha256 hex digest."""
    sha = sha256_bytes(data)
    key = blob_key(sha, ext)
    if not store.exists(bucket, key):
        store.put_bytes(bucket, key, data)
    return sha


def get_blob(store: S3Store, bucket: str, sha: str, ext: str, verify: bool = True) -> bytes:
    """Read a blob; with ``verify`` its sha256 is checked (DataError when the bytes do not match)."""
    data = store.get_bytes(bucket, blob_key(sha, ext))
    if verify and sha256_bytes(data) != sha:
        raise DataError(f"blob s3://{bucket}/{blob_key(sha, ext)} is corrupt: its sha256 does not match its key")
    return data


# ------------------------------------------------------------------------------------------------
# Entries and manifests
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetEntry:
    """One labelled frame of a dataset version.

    Attributes:
        frame_sha: sha256 of the image bytes (blob ``<frame_sha>.<ext>``).
        label_sha: sha256 of the YOLO txt label bytes (blob ``<label_sha>.txt``).
        width: frame width in pixels.
        height: frame height in pixels.
        camera: camera id.
        date: ISO date the frame was captured.
        hour: hour of day the frame was captured (0-23).
        split: ``train`` | ``val`` | ``golden`` | ``control``.
        source: where the label came from: ``seed``, ``golden``, ``round:<round_id>``.
        arm: ``None`` (not from a round), ``selected`` or ``control`` (the random arm of a round).
        n_boxes: number of labelled boxes.
        hard: the model missed or annotators corrected boxes: oversampled in training.
        key: the original production key (``frames/camera=.../date=.../<id>.jpg``) or another origin.
        ext: image file extension of the frame blob.
        class_counts: boxes per class, indexed like the manifest's ``classes`` (length C).
        synthetic: a generated frame (copy-paste, :mod:`tasks.copy_paste`): train split only, never evaluated on.
            Left out of the JSON when False, so versions without synthetic frames keep their ids.
    """

    frame_sha: str
    label_sha: str
    width: int
    height: int
    camera: str
    date: str
    hour: int
    split: str
    source: str
    arm: str | None = None
    n_boxes: int = 0
    hard: bool = False
    key: str = ""
    ext: str = "jpg"
    class_counts: tuple[int, ...] = ()
    synthetic: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_counts"] = list(self.class_counts)
        if not self.synthetic:
            d.pop("synthetic")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetEntry:
        d = dict(d)
        d["class_counts"] = tuple(int(c) for c in d.get("class_counts", ()))
        return cls(**d)


@dataclass
class DatasetManifest:
    """An immutable dataset version (its id is derived from this content).

    Attributes:
        kind: ``seed`` (bootstrap set), ``train`` (seed + labelled rounds) or ``golden`` (evaluation only).
        classes: ordered class names (must equal the configured classes to be used).
        entries: entries sorted by ``frame_sha``.
        parent: version id this one was built from, or None.
        rounds: sorted round ids whose labels are included (accumulated from the parent).
    """

    kind: str
    classes: list[str]
    entries: list[DatasetEntry] = field(default_factory=list)
    parent: str | None = None
    rounds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"dataset kind must be one of {list(KINDS)}, got {self.kind!r}")
        self.entries = sorted(self.entries, key=lambda e: e.frame_sha)
        self.rounds = sorted(set(self.rounds))
        shas = [e.frame_sha for e in self.entries]
        if len(set(shas)) != len(shas):
            raise DataError(f"dataset manifest holds {len(shas) - len(set(shas))} duplicate frame(s)")
        for e in self.entries:
            if e.split not in SPLITS:
                raise DataError(f"entry {e.frame_sha[:12]}: split must be one of {list(SPLITS)}, got {e.split!r}")
            if e.arm == "control" and e.split not in ("control", "train", "val"):
                raise DataError(f"entry {e.frame_sha[:12]}: control-arm frames must be in split 'control' (or train/val "
                                f"once retired), got {e.split!r}")
            if self.kind == "golden" and e.split != "golden":
                raise DataError(f"entry {e.frame_sha[:12]}: a golden dataset holds only split 'golden', got {e.split!r}")
            if e.synthetic and e.split != "train":
                raise DataError(f"entry {e.frame_sha[:12]}: synthetic frames belong in split 'train' only, got {e.split!r}")
            if self.kind != "golden" and e.split == "golden":
                raise DataError(f"entry {e.frame_sha[:12]}: golden frames belong in a 'golden' dataset, not {self.kind!r}")
            if e.class_counts and len(e.class_counts) != len(self.classes):
                raise DataError(
                    f"entry {e.frame_sha[:12]}: class_counts has {len(e.class_counts)} values for {len(self.classes)} classes"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "classes": list(self.classes),
            "entries": [e.to_dict() for e in self.entries],
            "parent": self.parent,
            "rounds": list(self.rounds),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetManifest:
        return cls(
            kind=d["kind"],
            classes=list(d["classes"]),
            entries=[DatasetEntry.from_dict(e) for e in d.get("entries", [])],
            parent=d.get("parent"),
            rounds=list(d.get("rounds", [])),
        )

    def canonical_json(self) -> bytes:
        """Sorted keys, compact separators: the bytes the version id hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def version_id(self) -> str:
        """First 16 hex digits of the sha256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json()).hexdigest()[:ID_LEN]

    def counts(self) -> dict[str, int]:
        """Frames per split (only splits present)."""
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.split] = out.get(e.split, 0) + 1
        return out

    def box_counts(self, split: str | None = None) -> dict[str, int]:
        """Boxes per class name (all splits, or one)."""
        tot = [0] * len(self.classes)
        for e in self.entries:
            if split is not None and e.split != split:
                continue
            for i, c in enumerate(e.class_counts):
                tot[i] += c
        return dict(zip(self.classes, tot, strict=True))

    def by_split(self, split: str) -> list[DatasetEntry]:
        return [e for e in self.entries if e.split == split]


def assign_split(camera: str, date: str, hour: int, val_share: float, salt: str = "") -> str:
    """``train`` or ``val`` for a camera-hour group, by hashing ``(camera, date, hour, salt)``.

    Frames of the same camera, date and hour always land in the same split (consecutive frames are
    near-duplicates), and the answer never changes between versions.

    Args:
        camera: camera id.
        date: ISO date.
        hour: hour of day (0-23).
        val_share: expected share of groups in ``val``, in [0, 1].
        salt: changes the assignment as a whole (e.g. per project).
    """
    if not 0.0 <= val_share <= 1.0:
        raise DataError(f"val_share must be in [0, 1], got {val_share}")
    h = hashlib.sha256(f"{salt}|{camera}|{date}|{int(hour):02d}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "val" if u < val_share else "train"


def class_counts_of(det: Detections, num_classes: int) -> tuple[int, ...]:
    """Boxes per class id of ``det`` as a tuple of length ``num_classes``."""
    import numpy as np

    if len(det) and (det.class_id.min() < 0 or det.class_id.max() >= num_classes):
        raise DataError(f"class ids {sorted(set(det.class_id.tolist()))} outside [0, {num_classes})")
    return tuple(int(c) for c in np.bincount(det.class_id, minlength=num_classes)[:num_classes])


def store_labelled_frame(
    store: S3Store,
    bucket: str,
    image: bytes,
    labels: Detections,
    *,
    width: int,
    height: int,
    classes: Sequence[str],
    camera: str,
    date: str,
    hour: int,
    split: str,
    source: str,
    arm: str | None = None,
    hard: bool = False,
    key: str = "",
    ext: str = "jpg",
) -> DatasetEntry:
    """Upload a frame and its labels as blobs and return the entry that references them.

    Args:
        labels: boxes in frame pixels (class ids index ``classes``).
        width: frame width (pixels), used to normalise the YOLO txt.
        height: frame height (pixels).
    """
    txt = labels.to_yolo_txt(width, height).encode()
    frame_sha = put_blob(store, bucket, image, ext)
    label_sha = put_blob(store, bucket, txt, "txt")
    return DatasetEntry(
        frame_sha=frame_sha,
        label_sha=label_sha,
        width=int(width),
        height=int(height),
        camera=camera,
        date=date,
        hour=int(hour),
        split=split,
        source=source,
        arm=arm,
        n_boxes=len(labels),
        hard=bool(hard),
        key=key,
        ext=ext,
        class_counts=class_counts_of(labels, len(classes)),
    )


def build_version(
    kind: str,
    classes: Sequence[str],
    new_entries: Iterable[DatasetEntry],
    parent: DatasetManifest | None = None,
    parent_id: str | None = None,
    rounds: Iterable[str] = (),
) -> DatasetManifest:
    """A new manifest: the parent's entries plus ``new_entries`` (pure; nothing is written).

    When a new entry has the ``frame_sha`` of an existing one, the new entry replaces it (the label
    from the newest round wins). Later entries in ``new_entries`` win over earlier ones too.

    Raises:
        DataError: the parent's classes differ from ``classes``.
    """
    classes = list(classes)
    by_sha: dict[str, DatasetEntry] = {}
    all_rounds = set(rounds)
    if parent is not None:
        if list(parent.classes) != classes:
            raise DataError(class_mismatch_message(parent.classes, classes, what="parent dataset"))
        by_sha.update({e.frame_sha: e for e in parent.entries})
        all_rounds |= set(parent.rounds)
        if parent_id is None:
            parent_id = parent.version_id
    for e in new_entries:
        by_sha[e.frame_sha] = e
    return DatasetManifest(
        kind=kind, classes=classes, entries=list(by_sha.values()), parent=parent_id, rounds=sorted(all_rounds)
    )


def class_mismatch_message(found: Sequence[str], expected: Sequence[str], what: str = "dataset") -> str:
    """One line that lists how two class lists differ (missing, extra, order)."""
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"extra {extra}")
    if not parts:
        parts.append(f"same names in another order: {list(found)} vs configured {list(expected)}")
    return f"{what} classes differ from the configured classes: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------
# Storage of versions
# ------------------------------------------------------------------------------------------------
def manifest_key(version_id: str) -> str:
    return f"{DATASET_PREFIX}/{version_id}/manifest.json"


def save_manifest(store: S3Store, settings: Settings, manifest: DatasetManifest, note: str = "") -> str:
    """Write a version (no-op when the same content exists) and its index entry; returns the id."""
    bucket = settings.s3.data_bucket
    vid = manifest.version_id
    key = manifest_key(vid)
    index_key = f"{INDEX_PREFIX}/{manifest.kind}/{vid}.json"
    if store.exists(bucket, key):
        if store.exists(bucket, index_key):
            return vid
    else:
        store.put_bytes(bucket, key, manifest.canonical_json(), content_type="application/json")
    store.put_json(  # after the manifest: a listed version always exists
        bucket,
        index_key,
        {
            "id": vid,
            "kind": manifest.kind,
            "parent": manifest.parent,
            "rounds": manifest.rounds,
            "n_frames": len(manifest.entries),
            "splits": manifest.counts(),
            "boxes": sum(e.n_boxes for e in manifest.entries),
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "note": note,
        },
    )
    return vid


def load_manifest(store: S3Store, settings: Settings, version_id: str) -> DatasetManifest:
    """Read and verify a version (DataError when missing or when its content does not match its id)."""
    bucket = settings.s3.data_bucket
    key = manifest_key(version_id)
    if not store.exists(bucket, key):
        raise DataError(f"dataset version {version_id!r} not found at s3://{bucket}/{key} (see `detloop dataset list`)")
    manifest = DatasetManifest.from_dict(json.loads(store.get_bytes(bucket, key)))
    if manifest.version_id != version_id:
        raise DataError(f"dataset version {version_id}: manifest content hashes to {manifest.version_id}; it was modified")
    return manifest


def list_versions(store: S3Store, settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    """Index entries of stored versions (optionally one kind), oldest first."""
    prefix = f"{INDEX_PREFIX}/{kind}/" if kind else f"{INDEX_PREFIX}/"
    out = []
    for obj in store.list(settings.s3.data_bucket, prefix):
        if obj.key.endswith(".json"):
            out.append(store.get_json(settings.s3.data_bucket, obj.key))
    return sorted(out, key=lambda d: (d.get("created_at", ""), d.get("id", "")))


def latest_version(store: S3Store, settings: Settings, kind: str) -> str | None:
    """Id of the most recently created version of ``kind`` (None when there is none)."""
    versions = list_versions(store, settings, kind)
    return versions[-1]["id"] if versions else None


# ------------------------------------------------------------------------------------------------
# Diff
# ------------------------------------------------------------------------------------------------
@dataclass
class DatasetDiff:
    """What changed from version ``a`` to version ``b`` (frame shas, sorted)."""

    a: str
    b: str
    added: list[str]
    removed: list[str]
    relabelled: list[str]
    resplit: list[str]
    boxes_a: dict[str, int]
    boxes_b: dict[str, int]
    frames_a: int
    frames_b: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"{self.a} -> {self.b}: frames {self.frames_a} -> {self.frames_b}; "
            f"+{len(self.added)} added, -{len(self.removed)} removed, {len(self.relabelled)} relabelled, "
            f"{len(self.resplit)} moved between splits",
            "boxes per class:",
        ]
        for c in self.boxes_b:
            a, b = self.boxes_a.get(c, 0), self.boxes_b.get(c, 0)
            lines.append(f"  {c:<12} {a:>6} -> {b:>6} ({b - a:+d})")
        return "\n".join(lines)


def diff(a: DatasetManifest, b: DatasetManifest, a_id: str | None = None, b_id: str | None = None) -> DatasetDiff:
    """Frames added, removed, relabelled (same frame, other label) and per-class box counts."""
    ea = {e.frame_sha: e for e in a.entries}
    eb = {e.frame_sha: e for e in b.entries}
    common = ea.keys() & eb.keys()
    names = list(dict.fromkeys([*b.classes, *a.classes]))
    boxes_a, boxes_b = a.box_counts(), b.box_counts()
    return DatasetDiff(
        a=a_id or a.version_id,
        b=b_id or b.version_id,
        added=sorted(eb.keys() - ea.keys()),
        removed=sorted(ea.keys() - eb.keys()),
        relabelled=sorted(s for s in common if ea[s].label_sha != eb[s].label_sha),
        resplit=sorted(s for s in common if ea[s].split != eb[s].split),
        boxes_a={c: boxes_a.get(c, 0) for c in names},
        boxes_b={c: boxes_b.get(c, 0) for c in names},
        frames_a=len(a.entries),
        frames_b=len(b.entries),
    )


# ------------------------------------------------------------------------------------------------
# Materialize a local Ultralytics dataset
# ------------------------------------------------------------------------------------------------
def cache_dir(settings: Settings, version_id: str) -> Path:
    """``<data_dir>/cache/datasets/<version_id>``."""
    return settings.data_dir / "cache" / "datasets" / version_id


def _write_split(
    store: S3Store, bucket: str, entries: list[DatasetEntry], root: Path, split: str, threads: int
) -> None:
    """Download a split's frames and labels into ``images/<split>`` and ``labels/<split>`` (resumable: every file
    appears whole or not at all, :mod:`detloop.localfs`; the split's marker is written last)."""
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    marker = img_dir / ".complete"
    if marker.exists():
        return
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)

    def fetch(e: DatasetEntry) -> None:
        img = img_dir / f"{e.frame_sha}.{e.ext}"
        lbl = lbl_dir / f"{e.frame_sha}.txt"
        if not img.exists():
            localfs.write_bytes(img, get_blob(store, bucket, e.frame_sha, e.ext))
        if not lbl.exists():
            localfs.write_bytes(lbl, get_blob(store, bucket, e.label_sha, "txt"))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(fetch, entries))
    localfs.write_text(marker, json.dumps({"n": len(entries)}))


def _cached_manifest(root: Path, version_id: str) -> DatasetManifest | None:
    """The local copy of a manifest when present and intact (its content hashes to its id)."""
    p = root / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = DatasetManifest.from_dict(json.loads(p.read_bytes()))
    except (ValueError, KeyError, TypeError, DataError):
        return None
    return m if m.version_id == version_id else None


def materialize(
    store: S3Store,
    settings: Settings,
    version_id: str,
    dest_dir: Path | None = None,
    splits: Sequence[str] = ("train", "val"),
    oversample: int = 1,
    threads: int = 8,
    repeats: dict[str, int] | None = None,
) -> Path:
    """Write a local Ultralytics dataset for a version; returns the path of its data YAML.

    Layout under ``dest_dir`` (default ``<data_dir>/cache/datasets/<id>/``)::

        images/<split>/<frame_sha>.jpg      labels/<split>/<frame_sha>.txt
        images/train/<frame_sha>.r<k>.jpg   hardlinks of repeated frames (k = 1 .. repeats-1)
        <split>_x<oversample>[_w<d>].txt    list of image paths (hard train frames appear oversample times,
                                            weighted ones their ``repeats``)
        data_<splits>_x<oversample>[_w<d>].yaml  path/train/val/<split>/names (names in config order)

    A split already complete (marker file) is reused, so repeated calls are cheap. Oversampled
    frames are separate hardlinked files (not repeated lines) so Ultralytics' label cache, which keys
    by path, keeps every copy.

    Args:
        splits: which splits to write; ``val`` of the YAML is ``val`` if present, else the first
            non-train split (``golden``/``control``), else ``train``.
        oversample: times each ``hard`` train frame is listed (>= 1).
        repeats: frame sha -> times that train frame is listed (per-frame weights: hard-example mining and
            rare-class oversampling, :mod:`tasks.sample_weights`); a hard frame is listed at least ``oversample``
            times. The list and YAML names carry a digest of it (``_w<digest>``).

    Raises:
        DataError: the manifest's classes differ from ``settings.classes``, an unknown split was
            asked for, or the requested splits hold no frames.
    """
    if oversample < 1:
        raise DataError(f"oversample must be >= 1, got {oversample}")
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise DataError(f"splits must be a non-empty subset of {list(SPLITS)}, got {list(splits)}")
    if repeats and min(repeats.values()) < 1:
        raise DataError(f"repeats must be >= 1, got {min(repeats.values())}")
    tag = f"x{oversample}"
    if repeats:
        tag += "_w" + sha256_bytes(json.dumps(sorted(repeats.items())).encode())[:10]
    root = Path(dest_dir) if dest_dir is not None else cache_dir(settings, version_id)
    manifest = _cached_manifest(root, version_id)
    if manifest is None:
        manifest = load_manifest(store, settings, version_id)
    if list(manifest.classes) != list(settings.classes):
        raise DataError(class_mismatch_message(manifest.classes, settings.classes, what=f"dataset {version_id}"))
    with localfs.writing(root):
        root.mkdir(parents=True, exist_ok=True)
    localfs.write_bytes(root / "manifest.json", manifest.canonical_json())
    lists: dict[str, Path] = {}
    total = 0
    for split in splits:
        entries = manifest.by_split(split)
        total += len(entries)
        _write_split(store, settings.s3.data_bucket, entries, root, split, threads)
        paths: list[str] = []
        img_dir, lbl_dir = root / "images" / split, root / "labels" / split
        for e in entries:
            img = img_dir / f"{e.frame_sha}.{e.ext}"
            paths.append(str(img))
            times = max(oversample if e.hard else 1, (repeats or {}).get(e.frame_sha, 1)) if split == "train" else 1
            if times > 1:
                for k in range(1, times):
                    localfs.link_or_copy(img, img_dir / f"{e.frame_sha}.r{k}.{e.ext}")
                    localfs.link_or_copy(lbl_dir / f"{e.frame_sha}.txt", lbl_dir / f"{e.frame_sha}.r{k}.txt")
                    paths.append(str(img_dir / f"{e.frame_sha}.r{k}.{e.ext}"))
        lst = root / f"{split}_{tag}.txt"
        localfs.write_text(lst, "\n".join(paths) + ("\n" if paths else ""))
        lists[split] = lst
    if total == 0:
        raise DataError(f"dataset {version_id} has no frames in splits {list(splits)} (it has {manifest.counts()})")
    others = [s for s in splits if s != "train"]
    val_split = "val" if "val" in splits else (others[0] if others else "train")
    train_split = "train" if "train" in splits else val_split
    counts = manifest.counts()
    empty = [sp for sp in dict.fromkeys((train_split, val_split)) if counts.get(sp, 0) == 0]
    if empty:
        raise DataError(
            f"dataset {version_id} has no frames in split(s) {empty} needed for the YAML's train/val (it has {counts})"
        )
    data = {
        "path": str(root),
        "train": str(lists[train_split]),
        "val": str(lists[val_split]),
        **{s: str(p) for s, p in lists.items() if s not in ("train", "val")},
        "names": dict(enumerate(settings.classes)),
        "nc": len(settings.classes),
        "detloop_version": version_id,
    }
    import yaml

    out = root / f"data_{'-'.join(splits)}_{tag}.yaml"
    localfs.write_text(out, yaml.safe_dump(data, sort_keys=False))
    return out


def with_split(entry: DatasetEntry, split: str) -> DatasetEntry:
    """A copy of ``entry`` in another split."""
    return replace(entry, split=split)

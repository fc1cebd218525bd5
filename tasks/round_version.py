"""A round's labels become a dataset version: content-addressed frame copies, then ``parent + round + carried``.

:func:`copy_frames` copies each labelled frame into content-addressed storage
(``blobs/sha256/<hh>/<sha256>.<ext>`` in the data bucket) so a dataset version never points at a
production frame that the bucket's lifecycle rule may expire. :func:`build_round_version` writes the
immutable version (golden frames are never trained on) and records it on the round; with
``rounds.carry_labels`` it also holds the labelled frames of earlier rounds the parent lacks
(:func:`carried_entries`: rounds whose challenger was rejected), so no paid label is left untrained.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from detloop.contracts import LabelledFrame
from detloop.settings import Settings


def split_for(frame: LabelledFrame, val_share: float, salt: str = "") -> str:
    """``control`` for the control arm (never trained on), else a stable grouped train/val split."""
    from detloop.contracts import frame_hour, parse_frame_key
    from detloop.datasets import assign_split

    if frame.arm == "control":
        return "control"
    parsed = parse_frame_key(frame.key)
    camera = frame.camera or (parsed[0] if parsed else "")
    day = frame.date or (parsed[1].isoformat() if parsed else "")
    hour = frame_hour(parsed[2]) if parsed else 0
    return assign_split(camera, day, hour, val_share, salt)


def retire_after(settings: Settings) -> int | None:
    """Rounds a control frame serves before it retires into training (None: retirement off)."""
    sel = settings.selection
    if not sel.control_retire:
        return None
    return sel.control_retire_after or max(sel.control_pool_rounds, settings.drift.live_rounds)


def retire_controls(entries: Sequence[Any], current: str, after: int | None, val_share: float,
                    salt: str = "", focused: Collection[str] = ()) -> tuple[list[Any], list[str]]:
    """Move the control entries that have served their window into train/val (pure).

    Rounds are ordered as the gate orders them (:func:`tasks.slices.control_sources`), up to ``current``. The
    control frames of a weekly round serve the ``after`` latest weekly rounds, those of a drift round
    (``focused``) the ``after`` latest rounds of any kind: the live-accuracy window
    (:func:`tasks.live_accuracy.live_sources`), so a burst of drift rounds does not retire every weekly control
    frame at once. Control entries outside it retire: their split becomes the stable grouped train/val split
    (:func:`detloop.datasets.assign_split`), ``arm`` stays ``control``.

    Args:
        entries: all ``DatasetEntry`` of the version being built.
        current: ``round:<id>`` of the round being added.
        after: rounds a control frame serves (None: nothing retires).
        focused: sources (``round:<id>``) of drift rounds; none: every round counts alike.

    Returns:
        (entries with the retired ones moved, sources of the rounds retired now).
    """
    from detloop.datasets import assign_split, with_split
    from tasks.live_accuracy import live_sources
    from tasks.slices import control_sources

    ctl = [e for e in entries if e.split == "control"]
    if after is None or not ctl:
        return list(entries), []
    order = control_sources(ctl, current, len(ctl) + 1)  # every round up to current, oldest first
    old = set(order) - live_sources(order, set(focused), after)
    out = [with_split(e, assign_split(e.camera, e.date, e.hour, val_share, salt)) if e.split == "control"
           and e.source in old else e for e in entries]
    return out, sorted(old)


@dataclass(frozen=True)
class OtherVersion:
    """A round's dataset version the new version's parent may lack.

    Attributes:
        manifest: the version.
        base: the manifest it was built on (what it inherited rather than introduced); None: none.
        after_parent: written after the new version's parent, so a label it introduced for a frame the parent
            also holds is the newer one (a late edit).
    """

    manifest: Any
    base: Any | None
    after_parent: bool


def carried_entries(parent: Any, others: Sequence[OtherVersion], current: str) -> tuple[list[Any], list[str]]:
    """Labelled round frames that ``parent`` lacks, from other rounds' dataset versions (pure).

    A round's labels live in the version its retrain built (named by its round record). When that challenger
    was rejected, the next round builds on the champion's training data, which never held them: without this
    they would be paid for and never trained on. Carried: every non-synthetic entry from a round (``source``
    ``round:<id>``, not ``current``) that a version introduced (not in its ``base``) and that the parent lacks;
    or, from a version written after the parent, a newer label of a frame the parent holds (a late edit that
    arrived with a rejected round). When several versions introduce a frame, the later one in ``others``
    (oldest first) wins.

    Args:
        parent: the manifest the new version builds on (None: nothing to compare with, nothing carried).
        others: the other rounds' versions, oldest first.
        current: the round being added (its own entries come from its pull, not from here).

    Returns:
        (entries to add, the round ids they come from).
    """
    if parent is None:
        return [], []
    have = {e.frame_sha: e.label_sha for e in parent.entries}
    by_sha: dict[str, Any] = {}
    for o in others:
        inherited = {(e.frame_sha, e.label_sha) for e in o.base.entries} if o.base is not None else set()
        for e in o.manifest.entries:
            rid = e.source.removeprefix("round:") if e.source.startswith("round:") else None
            if rid is None or rid == current or e.synthetic or (e.frame_sha, e.label_sha) in inherited:
                continue
            if e.frame_sha in have and (have[e.frame_sha] == e.label_sha or not o.after_parent):
                continue
            by_sha[e.frame_sha] = e
    return list(by_sha.values()), sorted({e.source.removeprefix("round:") for e in by_sha.values()})


def copy_frames(
    store: Any, settings: Settings, frames: Sequence[LabelledFrame], round_id: str, threads: int = 8
) -> list[Any]:
    """Copy each frame (and its YOLO txt label) into content-addressed storage in the data bucket.

    Fills ``frame.sha256`` / ``frame.blob_key`` and returns one ``detloop.datasets.DatasetEntry``
    per frame (split from :func:`split_for`, ``source = round:<round_id>``). An object already
    present is not uploaded again, so a re-run costs only the reads.
    """
    from concurrent.futures import ThreadPoolExecutor

    from detloop.contracts import frame_hour, parse_frame_key
    from detloop.datasets import blob_key, store_labelled_frame

    def one(f: LabelledFrame) -> Any:
        body = store.get_bytes(f.bucket, f.key)
        ext = f.key.rsplit(".", 1)[-1].lower() if "." in f.key else "jpg"
        parsed = parse_frame_key(f.key)
        entry = store_labelled_frame(
            store, settings.s3.data_bucket, body, f.detections, width=f.width, height=f.height,
            classes=settings.classes, camera=f.camera or (parsed[0] if parsed else ""),
            date=f.date or (parsed[1].isoformat() if parsed else ""), hour=frame_hour(parsed[2]) if parsed else 0,
            split=split_for(f, settings.rounds.val_share), source=f"round:{round_id}",
            arm=f.arm, hard=f.hard, key=f.key, ext=ext,
        )
        f.sha256, f.blob_key = entry.frame_sha, blob_key(entry.frame_sha, ext)
        return entry

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, frames))


def build_round_version(
    store: Any,
    settings: Settings,
    round_id: str,
    entries: Sequence[Any],
    parent_id: str | None = "latest",
    golden_id: str | None = "latest",
) -> tuple[str, Any, dict[str, Any]]:
    """Write the dataset version ``parent + this round's entries`` (+ carried ones, :func:`carried_entries`; kind
    ``train``). A re-run of the round reuses the version its record names while that holds the round's labels.

    Args:
        entries: ``DatasetEntry`` of the round (from :func:`copy_frames`).
        parent_id: previous train version; ``"latest"``: the latest ``train`` version, else the latest
            ``seed`` version, else none; None: no parent. Its synthetic frames (copy-paste) are not carried over:
            each fine-tune synthesises its own from the real frames.
        golden_id: golden version whose frames must never be trained on; ``"latest"``: the latest
            golden version; None: no golden check.

    Returns:
        (version id, manifest, report with counts and the frames excluded as golden).
    """
    from detloop import datasets as ds
    from tasks import rounds

    if parent_id == "latest":
        parent_id = ds.latest_version(store, settings, "train") or ds.latest_version(store, settings, "seed")
    parent = ds.load_manifest(store, settings, parent_id) if parent_id else None
    if parent is not None and any(e.synthetic for e in parent.entries):  # a copy-paste version: its real frames
        parent = ds.DatasetManifest(kind=parent.kind, classes=parent.classes, parent=parent.parent,
                                    entries=[e for e in parent.entries if not e.synthetic], rounds=parent.rounds)
    if golden_id == "latest":
        golden_id = ds.latest_version(store, settings, "golden")
    golden = {e.frame_sha for e in ds.load_manifest(store, settings, golden_id).entries} if golden_id else set()
    kept = [e for e in entries if e.frame_sha not in golden]
    reused = _built_before(store, settings, round_id, kept)
    if reused is not None:  # a re-run after a crash: the version this round built, even if more rounds came since
        vid, manifest = reused
        return vid, manifest, {"version": vid, "parent": manifest.parent, "round_id": round_id, "reused": True,
                               "new_entries": len(kept), "excluded_golden": len(entries) - len(kept),
                               "carried_rounds": [], "splits": manifest.counts(), "frames": len(manifest.entries)}
    carried, carried_rounds = [], []
    if settings.rounds.carry_labels and parent is not None:
        # the versions of this project's rounds (list_rounds is scoped to the Label Studio project) that the
        # parent does not hold, oldest first
        carried, carried_rounds = carried_for(store, settings, round_id, parent, parent_id)
        carried = [e for e in carried if e.frame_sha not in golden]
    manifest = ds.build_version("train", settings.classes, [*carried, *kept], parent=parent, parent_id=parent_id,
                                rounds=[round_id, *carried_rounds])
    drift_rounds = {f"round:{r.round_id}" for r in rounds.list_rounds(store, settings) if r.reason != "weekly"}
    moved, retired = retire_controls(manifest.entries, f"round:{round_id}", retire_after(settings),
                                     settings.rounds.val_share, focused=drift_rounds)
    if retired:  # control frames that served their window join training (same parent, same rounds)
        manifest = ds.DatasetManifest(kind=manifest.kind, classes=manifest.classes, entries=moved,
                                      parent=manifest.parent, rounds=manifest.rounds)
    vid = ds.save_manifest(store, settings, manifest, note=f"labels of round {round_id}")
    if rounds.load_round(store, settings, round_id) is not None:
        rounds.mark_round(store, settings, round_id, dataset_version=vid)
    report = {
        "version": vid,
        "parent": parent_id,
        "round_id": round_id,
        "new_entries": len(kept),
        "excluded_golden": len(entries) - len(kept),
        "carried_rounds": carried_rounds,
        "carried_entries": len(carried),
        "retired_control_rounds": [r.removeprefix("round:") for r in retired],
        "splits": manifest.counts(),
        "frames": len(manifest.entries),
    }
    return vid, manifest, report


def _built_before(store: Any, settings: Settings, round_id: str, kept: Sequence[Any]) -> tuple[str, Any] | None:
    """The version an earlier run of this round wrote, when it holds every one of ``kept`` with the same label."""
    from detloop import datasets as ds
    from detloop.errors import DataError
    from tasks import rounds

    rec = rounds.load_round(store, settings, round_id)
    if rec is None or not rec.dataset_version:
        return None
    try:
        manifest = ds.load_manifest(store, settings, rec.dataset_version)
    except DataError:
        return None
    labels = {e.frame_sha: e.label_sha for e in manifest.entries}
    if all(labels.get(e.frame_sha) == e.label_sha for e in kept):
        return rec.dataset_version, manifest
    return None


def carried_for(store: Any, settings: Settings, round_id: str, parent: Any, parent_id: str | None,
                created_before: str | None = None) -> tuple[list[Any], list[str]]:
    """:func:`carried_entries` of ``parent`` against :func:`other_versions` (the one composition the round's
    version, selection's labelled set and the soak replay share)."""
    if parent is None:
        return [], []
    return carried_entries(parent, other_versions(store, settings, round_id, parent, parent_id, created_before),
                           round_id)


def other_versions(store: Any, settings: Settings, round_id: str, parent: Any, parent_id: str | None,
                   created_before: str | None = None) -> list[OtherVersion]:
    """The versions of this project's other rounds (``list_rounds`` is scoped to the Label Studio project) whose
    round the parent does not hold, oldest round first (:func:`carried_entries` reads them).

    ``created_before``: only rounds created before this ISO time (a replay of an earlier round)."""
    from detloop import datasets as ds
    from tasks import rounds

    def created(v: str | None) -> str:
        key = f"{ds.INDEX_PREFIX}/train/{v}.json"
        if not v or not store.exists(settings.s3.data_bucket, key):
            return ""
        return str(store.get_json(settings.s3.data_bucket, key).get("created_at") or "")

    def other(vid: str) -> OtherVersion:
        m = ds.load_manifest(store, settings, vid)
        base = parent if m.parent == parent_id else (ds.load_manifest(store, settings, m.parent) if m.parent else None)
        return OtherVersion(m, base, created(vid) > parent_created)

    lineage = set(parent.rounds)
    vids = [r.dataset_version for r in rounds.list_rounds(store, settings)
            if r.dataset_version and r.round_id != round_id and r.round_id not in lineage
            and (created_before is None or r.created_at < created_before)]
    vids = [v for v in dict.fromkeys(vids) if v != parent_id]
    parent_created = created(parent_id) if vids else ""  # read once, not once per version
    return [other(v) for v in vids]

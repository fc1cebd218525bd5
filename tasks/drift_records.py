"""The drift monitor's records in S3: the one module that writes them.

Layout in the data bucket, per registered model name (several models can share a bucket):

``drift/model=<name>/version=<v>/reference.npz``   the reference's features (frames, boxes, embeddings)
``drift/model=<name>/version=<v>/reference.json``  what it is: anchor day, days, frames per camera (written last)
``drift/model=<name>/version=<v>/days/<day>.npz``  one day's features (embeddings as float16)
``drift/model=<name>/version=<v>/days/<day>.json`` the day's statistics per camera against that reference
``drift/model=<name>/version=<v>/state.json``      the episode machine (streaks, last day processed)
``drift/model=<name>/episodes/<episode_id>.json``  one episode (opened, days, event, round, ack, silence)
``drift/model=<name>/live/version=<v>/<key>.json`` live accuracy of version ``v`` on a set of control frames

Everything about a champion is keyed by its registry version: a new champion gets a new reference (and
new statistics), and a rollback finds the old ones where they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from detloop.settings import Settings
from tasks.drift import CameraDayStats, Episode, Features, MonitorState

PREFIX = "drift/"


def model_prefix(settings: Settings) -> str:
    return f"{PREFIX}model={settings.mlflow.model_name}/"


def version_prefix(settings: Settings, version: str) -> str:
    return f"{model_prefix(settings)}version={version}/"


# ---- production days ---------------------------------------------------------------------------------
def days_with_frames(store: Any, settings: Settings, cameras: Sequence[str] | None = None) -> dict[str, list[date]]:
    """Camera -> the days that have production frames (one delimiter listing per camera, no object listing)."""
    from tasks.sampling import list_cameras

    bucket, prefix = settings.s3.production_bucket, settings.s3.production_prefix
    out: dict[str, list[date]] = {}
    for cam in cameras or list_cameras(store, bucket, prefix):
        head = f"{prefix}camera={cam}/date="
        days = []
        for p in store.list_prefixes(bucket, head):
            try:
                days.append(date.fromisoformat(p[len(head):].strip("/")))
            except ValueError:
                continue
        out[cam] = sorted(days)
    return out


# ---- the reference -----------------------------------------------------------------------------------
def load_reference(store: Any, settings: Settings, version: str) -> tuple[dict[str, Any], Features] | None:
    """``(meta, features)`` of version ``version``'s reference, or None when none was built yet."""
    meta = load_reference_meta(store, settings, version)
    if meta is None:
        return None
    return meta, Features.from_npz(store.get_bytes(settings.s3.data_bucket, version_prefix(settings, version)
                                                   + "reference.npz"))


def load_recent_rows(store: Any, settings: Settings, version: str) -> Features | None:
    """The carried cameras' rows of version ``version``'s ordinary reference days (what :func:`save_reference` kept
    as ``recent``), or None: no camera was carried, or the reference was built before they were kept."""
    body = store.get_bytes_or_none(settings.s3.data_bucket, version_prefix(settings, version) + "reference_recent.npz")
    return None if body is None else Features.from_npz(body)


def load_reference_meta(store: Any, settings: Settings, version: str) -> dict[str, Any] | None:
    """Version ``version``'s ``reference.json`` alone (no features), or None when none was built yet."""
    bucket, vp = settings.s3.data_bucket, version_prefix(settings, version)
    return store.get_json(bucket, vp + "reference.json") if store.exists(bucket, vp + "reference.json") else None


def carried_by_version(store: Any, settings: Settings) -> dict[str, dict[str, Any]]:
    """Version -> the cameras its reference carried from before their drift (``reference.json``'s ``carried``),
    for every version with a reference, oldest first."""
    out: dict[str, dict[str, Any]] = {}
    keys = [o.key for o in store.list(settings.s3.data_bucket, model_prefix(settings)) if o.key.endswith("/reference.json")]
    for key in keys:
        version = key[len(model_prefix(settings)):].split("/", 1)[0].removeprefix("version=")
        out[version] = store.get_json(settings.s3.data_bucket, key).get("carried") or {}
    return dict(sorted(out.items(), key=lambda kv: (len(kv[0]), kv[0])))


def save_reference(store: Any, settings: Settings, version: str, meta: dict[str, Any], features: Features,
                   recent: Features | None = None) -> str:
    """Write the reference (features first, ``reference.json`` last: a half-written reference is never read).
    ``recent``: the ordinary reference rows of the carried cameras, which the pre-onset rows replaced
    (:func:`load_recent_rows`)."""
    bucket, vp = settings.s3.data_bucket, version_prefix(settings, version)
    store.ensure_bucket(bucket)
    store.put_bytes(bucket, vp + "reference.npz", features.to_npz(embedding=True), "application/octet-stream")
    if recent is not None:
        store.put_bytes(bucket, vp + "reference_recent.npz", recent.to_npz(embedding=True), "application/octet-stream")
    store.put_json(bucket, vp + "reference.json", meta)
    return vp + "reference.json"


# ---- one day against the reference -----------------------------------------------------------------------
def load_day(store: Any, settings: Settings, version: str, day: str) -> tuple[dict[str, Any], dict[str, CameraDayStats]] | None:
    """``(meta, camera -> statistics)`` of ``day`` against version ``version``'s reference, or None."""
    bucket, vp = settings.s3.data_bucket, version_prefix(settings, version)
    if not store.exists(bucket, f"{vp}days/{day}.json"):
        return None
    doc = store.get_json(bucket, f"{vp}days/{day}.json")
    stats = {c: CameraDayStats.from_dict(s) for c, s in doc.pop("cameras").items()}
    return doc, stats


def load_days(store: Any, settings: Settings, version: str) -> dict[str, dict[str, CameraDayStats]]:
    """Every stored day against version ``version``'s reference: ``day -> camera -> statistics``.

    What a rule is replayed over (:func:`tasks.drift.verdict`, :func:`tasks.drift.replay`) without scoring
    anything again.
    """
    out = {}
    for obj in store.list(settings.s3.data_bucket, f"{version_prefix(settings, version)}days/"):
        if obj.key.endswith(".json"):
            day = obj.key.rsplit("/", 1)[-1].removesuffix(".json")
            got = load_day(store, settings, version, day)
            if got is not None:
                out[day] = got[1]
    return dict(sorted(out.items()))


def load_day_features(store: Any, settings: Settings, version: str, day: str) -> Features | None:
    """The stored features of ``day`` (scored by version ``version``), or None."""
    bucket, key = settings.s3.data_bucket, f"{version_prefix(settings, version)}days/{day}.npz"
    if not store.exists(bucket, key):
        return None
    return Features.from_npz(store.get_bytes(bucket, key))


def save_day(store: Any, settings: Settings, version: str, day: str, stats: dict[str, CameraDayStats],
             features: Features, meta: dict[str, Any] | None = None) -> None:
    bucket, vp = settings.s3.data_bucket, version_prefix(settings, version)
    store.put_bytes(bucket, f"{vp}days/{day}.npz", features.to_npz(), "application/octet-stream")
    store.put_json(bucket, f"{vp}days/{day}.json", {"day": day, "model_version": version, **(meta or {}),
                                                    "cameras": {c: s.to_dict() for c, s in sorted(stats.items())}})


# ---- the episode machine and episodes ---------------------------------------------------------------------
def load_state(store: Any, settings: Settings, version: str) -> MonitorState:
    key = version_prefix(settings, version) + "state.json"
    if not store.exists(settings.s3.data_bucket, key):
        return MonitorState(version)
    return MonitorState.from_dict(store.get_json(settings.s3.data_bucket, key))


def save_state(store: Any, settings: Settings, state: MonitorState) -> None:
    store.put_json(settings.s3.data_bucket, version_prefix(settings, state.model_version) + "state.json",
                   state.to_dict())


def episode_key(settings: Settings, episode_id: str) -> str:
    return f"{model_prefix(settings)}episodes/{episode_id}.json"


def load_episode(store: Any, settings: Settings, episode_id: str) -> Episode | None:
    key = episode_key(settings, episode_id)
    if not store.exists(settings.s3.data_bucket, key):
        return None
    return Episode.from_dict(store.get_json(settings.s3.data_bucket, key))


def list_episodes(store: Any, settings: Settings, status: str | None = None) -> list[Episode]:
    """Episodes of this model, oldest first."""
    out = []
    for obj in store.list(settings.s3.data_bucket, f"{model_prefix(settings)}episodes/"):
        if obj.key.endswith(".json"):
            e = Episode.from_dict(store.get_json(settings.s3.data_bucket, obj.key))
            if status is None or e.status == status:
                out.append(e)
    return sorted(out, key=lambda e: (e.opened_on, e.episode_id))


def save_episodes(store: Any, settings: Settings, episodes: Iterable[Episode]) -> None:
    for e in episodes:
        store.put_json(settings.s3.data_bucket, episode_key(settings, e.episode_id), e.to_dict())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def mark_episode(store: Any, settings: Settings, episode_id: str, **fields: Any) -> Episode:
    """Update fields of a stored episode (``event_id``, ``emitted_at``, ``round_id``, ack and silence).

    Raises:
        NotFound: no such episode (the message lists the known ones).
    """
    from detloop.errors import DataError, NotFound

    allowed = {"event_id", "emitted_at", "round_id", "acked_by", "acked_at", "note", "silenced_until",
               "announcements", "announced_for", "round_days"}
    bad = sorted(set(fields) - allowed)
    if bad:
        raise DataError(f"episode {episode_id}: cannot set {bad}; settable fields are {sorted(allowed)}")
    e = load_episode(store, settings, episode_id)
    if e is None:
        known = [x.episode_id for x in list_episodes(store, settings)][-10:]
        raise NotFound(f"no drift episode {episode_id!r} for model {settings.mlflow.model_name} "
                       f"(known: {', '.join(known) or 'none'})")
    for k, v in fields.items():
        setattr(e, k, v)
    save_episodes(store, settings, [e])
    return e


def acknowledge(store: Any, settings: Settings, episode_id: str, by: str, note: str | None = None,
                silence_until: date | None = None) -> Episode:
    """An operator acknowledges an episode (who, when, a note); with ``silence_until`` its cameras open no
    new episode before that day."""
    fields: dict[str, Any] = {"acked_by": by, "acked_at": _now()}
    if note:
        fields["note"] = note
    if silence_until is not None:
        fields["silenced_until"] = silence_until.isoformat()
    return mark_episode(store, settings, episode_id, **fields)


# ---- live accuracy cache ------------------------------------------------------------------------------------
def live_key(settings: Settings, version: str, key: str) -> str:
    return f"{model_prefix(settings)}live/version={version}/{key}.json"


# ---- when the champion took over ------------------------------------------------------------------------------
def champion_anchor(store: Any, settings: Settings, registry: Any, version: str) -> tuple[date | None, str]:
    """The production day champion ``version`` took over (:func:`tasks.drift.promotion_anchor`) from the
    promotion log, the version's tags and, for a model trained on a round, that round's record."""
    from tasks.drift import promotion_anchor
    from tasks.registry import read_promotion_log
    from tasks.rounds import load_round

    tags = dict(getattr(registry.get_version(version), "tags", None) or {})
    rid = tags.get("detloop.round_id")
    rec = load_round(store, settings, rid) if rid else None
    # the log is shared by every model of the bucket: only this model's entries (another model's v1 is not ours)
    mine = [e for e in read_promotion_log(store, settings) if e.get("model") == settings.mlflow.model_name]
    return promotion_anchor(version, mine, tags, rec.as_of if rec else None)

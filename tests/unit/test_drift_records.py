"""The drift records in an object store (the in-memory fake; the real S3 path runs in tests/integration/test_drift.py)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from detloop.settings import load_settings
from tasks import drift_records as dr
from tasks.drift import CameraDayStats, Episode, Features, MonitorState, Stat, replay, verdict
from tests.fakes import FakeStore


def _features(n: int) -> Features:
    rng = np.random.default_rng(0)
    return Features(np.array(["cam1"] * n), np.array(["2026-01-05"] * n), rng.random(n), rng.random(n),
                    np.ones(n, np.int64), rng.random((n, 4)).astype(np.float32), np.arange(n), rng.random(n),
                    np.zeros(n, np.int64), rng.random(n))


def test_references_days_state_and_episodes_round_trip_per_model_and_version() -> None:
    s = load_settings("configs/test.yaml")
    store = FakeStore()
    assert dr.load_reference(store, s, "3") is None
    dr.save_reference(store, s, "3", {"version": "3", "days": ["2026-01-05"]}, _features(5))
    meta, feats = dr.load_reference(store, s, "3")
    assert meta["version"] == "3" and feats.n_frames == 5 and feats.embedding.shape == (5, 4)
    assert dr.load_reference(store, s, "4") is None  # keyed by version
    other = load_settings("configs/test.yaml", overrides={"mlflow": {"model_name": "other"}})
    assert dr.load_reference(store, other, "3") is None  # and by registered model

    stats = {"cam1": CameraDayStats("cam1", "2026-01-06", 30, 100, 50, 200, "camera", True,
                                    tests=[Stat("brightness", "ks", 0.9, 1e-9), Stat("contrast", "ks", 0.8, 1e-8)])}
    dr.save_day(store, s, "3", "2026-01-06", stats, _features(3), {"stats_key": "k"})
    meta, back = dr.load_day(store, s, "3", "2026-01-06")
    assert meta["stats_key"] == "k" and back["cam1"].tests[0].p == 1e-9
    assert dr.load_day_features(store, s, "3", "2026-01-06").n_frames == 3
    # a rule replayed over the stored days, without scoring anything again
    days = dr.load_days(store, s, "3")
    _, eps = replay({d: {c: verdict(x, s.drift) for c, x in cams.items()} for d, cams in days.items()},
                    s.drift.model_copy(update={"alarm_consecutive_days": 1}), "3")
    assert list(eps) == ["drift-v3-2026-01-06"]

    dr.save_state(store, s, MonitorState("3", "2026-01-06"))
    assert dr.load_state(store, s, "3").last_day == "2026-01-06" and dr.load_state(store, s, "4").last_day is None
    dr.save_episodes(store, s, [Episode("drift-v3-2026-01-06", "3", "2026-01-06", ["cam1"], ["2026-01-06"])])
    e = dr.acknowledge(store, s, "drift-v3-2026-01-06", "ana", "camera moved", date(2026, 2, 1))
    assert (e.acked_by, e.note, e.silenced_until) == ("ana", "camera moved", "2026-02-01")
    assert [x.episode_id for x in dr.list_episodes(store, s, "open")] == ["drift-v3-2026-01-06"]
    from detloop.errors import DataError, NotFound

    with pytest.raises(NotFound, match=r"no drift episode 'nope'.*known: drift-v3-2026-01-06"):
        dr.acknowledge(store, s, "nope", "ana")
    with pytest.raises(DataError, match="cannot set"):
        dr.mark_episode(store, s, "drift-v3-2026-01-06", status="closed")


def test_what_each_champion_carried_is_read_back_per_version() -> None:
    s = load_settings("configs/test.yaml")
    store = FakeStore()
    assert dr.carried_by_version(store, s) == {}
    carried = {"cam2": {"onset": "2026-01-19", "days": ["2026-01-16"], "from_episode": "drift-v9-2026-01-20"}}
    for v, c in (("10", carried), ("9", {}), ("2", None)):
        dr.save_reference(store, s, v, {"version": v, **({"carried": c} if c is not None else {})}, _features(2))
    assert dr.carried_by_version(store, s) == {"2": {}, "9": {}, "10": carried}  # numeric order, none = {}
    assert dr.load_reference_meta(store, s, "10")["carried"] == carried and dr.load_reference_meta(store, s, "7") is None


def test_days_with_frames_lists_prefixes_not_objects() -> None:
    s = load_settings("configs/test.yaml")
    store = FakeStore()
    for key in ["frames/camera=cam0/date=2026-01-05/000000-0000.jpg", "frames/camera=cam0/date=2026-01-07/x.jpg",
                "frames/camera=cam4/date=2026-01-26/y.jpg"]:
        store.put_bytes(s.s3.production_bucket, key, b"x")
    got = dr.days_with_frames(store, s)
    assert got == {"cam0": [date(2026, 1, 5), date(2026, 1, 7)], "cam4": [date(2026, 1, 26)]}
    assert dr.days_with_frames(store, s, ["cam4"]) == {"cam4": [date(2026, 1, 26)]}


def test_stored_statistics_are_keyed_by_the_resamples_that_made_them() -> None:
    """Statistics computed without the refinement of small p-values are not reused once it is on (nor the reverse)."""
    from flows.drift import stats_key

    s = load_settings("configs/test.yaml")
    off = s.model_copy(update={"drift": s.drift.model_copy(update={"permutations_refine": None})})
    more = s.model_copy(update={"drift": s.drift.model_copy(update={"permutations_refine": 99999})})
    pool = s.model_copy(update={"drift": s.drift.model_copy(update={"pool_days": 3})})
    assert len({stats_key(s), stats_key(off), stats_key(more), stats_key(pool)}) == 4
    assert stats_key(s) == stats_key(load_settings("configs/test.yaml"))

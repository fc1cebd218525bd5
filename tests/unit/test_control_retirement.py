"""Control frames retire into training once they have served their window (pure)."""

from __future__ import annotations

import pytest

from detloop.datasets import DatasetEntry, DatasetManifest
from detloop.errors import DataError
from detloop.settings import Settings
from tasks.round_version import retire_after, retire_controls


def entry(i: int, split: str, source: str, date: str, arm: str | None = None) -> DatasetEntry:
    return DatasetEntry(frame_sha=f"{i:064x}", label_sha="0" * 64, width=64, height=48, camera=f"c{i % 3}",
                        date=date, hour=i % 24, split=split, source=source, arm=arm)


def rounds_of_controls(n_rounds: int, per_round: int = 3) -> list[DatasetEntry]:
    out = [entry(1000 + i, "train", "seed", "2026-01-01") for i in range(5)]
    for r in range(1, n_rounds + 1):
        out += [entry(r * 100 + j, "control", f"round:r{r}", f"2026-02-{r:02d}", "control") for j in range(per_round)]
        out.append(entry(r * 100 + 50, "train", f"round:r{r}", f"2026-02-{r:02d}", "selected"))
    return out


def test_controls_older_than_the_window_retire_and_the_rest_stay() -> None:
    entries = rounds_of_controls(5)
    moved, retired = retire_controls(entries, "round:r5", after=4, val_share=0.2)
    assert retired == ["round:r1"]
    by_src = {}
    for e in moved:
        if e.arm == "control":
            by_src.setdefault(e.source, set()).add(e.split)
    assert by_src["round:r1"] <= {"train", "val"} and "control" not in by_src["round:r1"]
    for r in (2, 3, 4, 5):
        assert by_src[f"round:r{r}"] == {"control"}
    assert [e for e in moved if e.arm != "control"] == [e for e in entries if e.arm != "control"]
    # the manifest accepts retired control entries in train/val, never golden
    DatasetManifest(kind="train", classes=["a"], entries=moved)
    with pytest.raises(DataError, match="control"):
        DatasetManifest(kind="train", classes=["a"], entries=[entry(1, "golden", "round:r1", "2026-02-01", "control")])


def test_nothing_retires_inside_the_window_or_when_off() -> None:
    entries = rounds_of_controls(3)
    assert retire_controls(entries, "round:r3", after=4, val_share=0.2)[1] == []
    assert retire_controls(entries, "round:r3", after=None, val_share=0.2) == (entries, [])
    moved, retired = retire_controls(entries, "round:r3", after=1, val_share=0.2)
    assert retired == ["round:r1", "round:r2"]
    assert sum(e.split == "control" for e in moved) == 3


def test_the_window_follows_the_settings() -> None:
    s = Settings(classes=["a"])
    assert retire_after(s) == max(s.selection.control_pool_rounds, s.drift.live_rounds)
    s2 = Settings(classes=["a"], selection={"control_retire_after": 2})
    assert retire_after(s2) == 2
    assert retire_after(Settings(classes=["a"], selection={"control_retire": False})) is None


def test_weekly_controls_count_weekly_rounds_so_a_drift_burst_does_not_retire_them() -> None:
    """The window of :func:`tasks.live_accuracy.live_sources`: weekly control frames serve the ``after`` latest
    weekly rounds, a drift round's the ``after`` latest rounds of any kind."""
    entries = rounds_of_controls(6)
    burst = {"round:r3", "round:r4", "round:r5"}  # three drift rounds between weekly rounds r2 and r6
    _, retired = retire_controls(entries, "round:r6", after=2, val_share=0.2, focused=burst)
    assert retired == ["round:r1", "round:r3", "round:r4"]  # r2 is still one of the last 2 weekly rounds
    assert retire_controls(entries, "round:r6", after=2, val_share=0.2)[1] == ["round:r1", "round:r2", "round:r3",
                                                                                "round:r4"]
    # built at r4 (r5 and r6 not yet there): rounds after current are never counted
    assert retire_controls(entries, "round:r4", after=2, val_share=0.2, focused=burst)[1] == []


def test_live_accuracy_never_takes_a_frame_a_newer_version_retired(monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`tasks.live_accuracy.control_items`: an older version still holds a retired frame as control; a
    champion may have trained on the newer version, so the frame is not a control frame any more."""
    import time

    import tasks.slices
    from detloop import datasets as ds
    from tasks.evaluation import EvalItem
    from tasks.live_accuracy import control_items
    from tests.fakes import FakeStore

    s = Settings(classes=["a"])
    store = FakeStore()
    entries = rounds_of_controls(2)
    older = DatasetManifest(kind="train", classes=["a"], entries=entries, rounds=["r1", "r2"])
    ds.save_manifest(store, s, older)
    time.sleep(0.002)  # versions are ordered by their creation time
    moved, retired = retire_controls(entries, "round:r2", after=1, val_share=0.2)
    assert retired == ["round:r1"]
    ds.save_manifest(store, s, DatasetManifest(kind="train", classes=["a"], entries=moved, rounds=["r2"]))
    monkeypatch.setattr(tasks.slices, "items_from_version", lambda _st, _s, _v, split, source=None, manifest=None: [
        EvalItem(e.frame_sha, None, e.camera) for e in manifest.by_split(split) if e.source in source])
    _, got = control_items(store, s, ["round:r1", "round:r2"])
    assert sorted(e.source for e in got) == ["round:r2"] * 3  # r1's three frames retired in the newer version
    _, before = control_items(store, s, ["round:r1"])
    assert before == []


def test_live_accuracy_checks_a_carried_camera_on_its_frames_since_the_onset(monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`tasks.live_accuracy.live_accuracy` with ``carried``: the carried camera's control frames dated on or
    after its onset get a point with the label-free estimate beside their mAP50 (the labelled check of a release);
    the record is cached under its own key, so the same champion without carried cameras has no such point."""
    from datetime import UTC, datetime, timedelta

    import numpy as np

    import tasks.slices
    from detloop import datasets as ds
    from detloop.detections import Detections
    from tasks.evaluation import EvalItem
    from tasks.live_accuracy import live_accuracy
    from tasks.rounds import open_round
    from tests.fakes import FakeStore

    s = Settings(classes=["a"], drift={"live_min_frames": 4, "release_check_min_frames": 3,
                                       "bootstrap_resamples": 20, "min_confidence": 0.1})
    store = FakeStore()
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    for k in (1, 2):
        open_round(store, s, f"r{k}", f"2026-02-0{k}", "1", 1, 3, now=t0 + timedelta(hours=k))
    # c1's frames: two before its onset (the 2nd), three on it; c0's: its camera is not carried
    entries = [entry(i, "control", f"round:r{1 + (i >= 6)}", "2026-02-01" if i < 6 else "2026-02-02", "control")
               for i in range(15)]
    ds.save_manifest(store, s, DatasetManifest(kind="train", classes=["a"], entries=entries, rounds=["r1", "r2"]))
    box = Detections(np.array([[10, 10, 40, 40]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64))
    monkeypatch.setattr(tasks.slices, "items_from_version", lambda _st, _s, _v, split, source=None, manifest=None: [
        EvalItem(e.frame_sha, box, e.camera) for e in manifest.by_split(split) if e.source in source])

    def predict(_art: object, items: list[EvalItem], _s: Settings) -> list[Detections]:
        # c1 from the 2nd on: as confident as ever, every box in the wrong place (a repaint fooling the confidences)
        return [Detections(it.gt.xyxy + (200 if it.camera == "c1" and it.image in late else 0),
                           np.full(1, 0.8, np.float32), it.gt.class_id) for it in items]

    late = {e.frame_sha for e in entries if e.camera == "c1" and e.date >= "2026-02-02"}
    got = live_accuracy(s, store, "1", None, 0.5, predict=predict, carried={"c1": "2026-02-02"})
    assert got.atc_threshold is not None
    (p,) = got.carried
    assert (p.camera, p.label, p.n_frames) == ("c1", "since 2026-02-02", len(late)) and len(late) >= 3
    assert p.map50 == pytest.approx(0.0) and p.estimate is not None and p.estimate > 0.5  # it over-reads them
    assert live_accuracy(s, store, "1", None, 0.5, predict=predict).carried == []
    again = live_accuracy(s, store, "1", None, 0.5, predict=lambda *_a: 1 / 0, carried={"c1": "2026-02-02"})
    assert again.carried == got.carried  # read back from its cache

"""Labels paid for: a rejected round's are trained on by the next round, and no frame is sent to labelling twice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detloop.datasets import (
    DatasetManifest,
    build_version,
    load_manifest,
    save_manifest,
    store_labelled_frame,
)
from detloop.detections import Detections
from detloop.settings import load_settings
from tasks.round_version import OtherVersion, build_round_version, carried_entries
from tasks.rounds import load_round, open_round
from tests.fakes import FakeStore

CLASSES = ["disc", "square", "triangle", "ring", "star"]


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})


def _entry(store: FakeStore, settings, i: int, source: str, split: str = "train", label: int = 0,  # type: ignore[no-untyped-def]
           arm: str | None = None):
    body = np.random.default_rng(i).integers(0, 255, 64, dtype=np.uint8).tobytes()  # distinct frame bytes
    det = Detections(xyxy=np.array([[1.0, 1.0, 9.0 + label, 9.0]]), confidence=np.ones(1), class_id=np.array([0]))
    return store_labelled_frame(store, settings.s3.data_bucket, body, det, width=64, height=64, classes=CLASSES,
                                camera="cam3", date="2026-01-27", hour=i % 24, split=split, source=source,
                                arm=arm, key=f"frames/{i}.jpg", ext="jpg")


def _shas(m: DatasetManifest) -> set[str]:
    return {e.frame_sha for e in m.entries}


def test_carried_entries_rules(settings) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    seed = [_entry(store, settings, i, "seed") for i in range(3)]
    parent = build_version("train", CLASSES, seed, rounds=[])
    r1 = [_entry(store, settings, 10 + i, "round:r1") for i in range(2)]
    v1 = build_version("train", CLASSES, r1, parent=parent, rounds=["r1"])
    r1_edited = replace(r1[0], label_sha="e" * 64)  # a later version holds a newer label of the same frame
    syn = replace(_entry(store, settings, 30, "round:r2"), synthetic=True)
    own = _entry(store, settings, 40, "round:r3")
    v2 = build_version("train", CLASSES, [r1_edited, syn, own], parent=v1, rounds=["r2", "r3"])

    others = [OtherVersion(v1, parent, True), OtherVersion(v2, v1, True)]
    got, rounds = carried_entries(parent, others, current="r3")
    assert {e.frame_sha for e in got} == {e.frame_sha for e in r1}  # not seed (in parent), synthetic, or r3 itself
    assert next(e for e in got if e.frame_sha == r1[0].frame_sha).label_sha == "e" * 64  # the later one wins
    assert rounds == ["r1"]
    assert carried_entries(None, others, "r3") == ([], [])
    assert carried_entries(v2, [OtherVersion(v1, parent, False)], "r3") == ([], [])  # all in the parent already
    # a late edit of a frame the parent holds comes along only from a version written after the parent; what a
    # version inherited from its base is not its to carry
    newer = carried_entries(v1, [OtherVersion(v2, v1, True)], "r3")[0]
    assert [e.label_sha for e in newer] == ["e" * 64]
    assert carried_entries(v1, [OtherVersion(v2, v1, False)], "r3") == ([], [])
    assert carried_entries(parent, [OtherVersion(v2, v1, True)], "r3")[0] == [r1_edited]  # r1[1]: inherited


def test_a_rejected_rounds_labels_join_the_next_version_once(settings) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    golden = save_manifest(store, settings, DatasetManifest("golden", CLASSES,
                                                            [_entry(store, settings, 900, "golden", "golden")]))
    champ = save_manifest(store, settings, build_version("train", CLASSES,
                                                         [_entry(store, settings, i, "seed") for i in range(4)]))
    # round r1: labelled, its challenger rejected: the champion's training data stays `champ`
    r1 = [_entry(store, settings, 10 + i, "round:r1") for i in range(3)]
    r1_ctl = _entry(store, settings, 20, "round:r1", split="control", arm="control")
    open_round(store, settings, "r1", "2026-01-26", "4", 3, 1)
    v1, m1, _ = build_round_version(store, settings, "r1", [*r1, r1_ctl], parent_id=champ, golden_id=golden)
    # round r2 builds on the champion's data, as the loop does: r1's labels come along
    r2 = [_entry(store, settings, 30 + i, "round:r2") for i in range(2)]
    open_round(store, settings, "r2", "2026-02-02", "4", 2, 0)
    v2, m2, rep = build_round_version(store, settings, "r2", r2, parent_id=champ, golden_id=golden)
    assert _shas(m2) == _shas(m1) | {e.frame_sha for e in r2}
    assert rep["carried_rounds"] == ["r1"] and rep["carried_entries"] == 4 and sorted(m2.rounds) == ["r1", "r2"]
    assert next(e for e in m2.entries if e.frame_sha == r1_ctl.frame_sha).split == r1_ctl.split  # control stays
    assert load_round(store, settings, "r2").dataset_version == v2
    # a re-run of r2 after a crash reuses its version, even after another round wrote one since
    r3 = [_entry(store, settings, 50, "round:r3")]
    open_round(store, settings, "r3", "2026-02-09", "4", 1, 0)
    build_round_version(store, settings, "r3", r3, parent_id=champ, golden_id=golden)
    again, _, rep2 = build_round_version(store, settings, "r2", r2, parent_id=champ, golden_id=golden)
    assert again == v2 and rep2["reused"]
    # labels changed since (a re-pull that differs): a new version
    changed = [replace(r2[0], label_sha="f" * 64), r2[1]]
    assert build_round_version(store, settings, "r2", changed, parent_id=champ, golden_id=golden)[0] != v2
    # off: the champion's data + this round only (the behaviour before carrying)
    settings.rounds.carry_labels = False
    _, m4, rep4 = build_round_version(store, settings, "r4", [_entry(store, settings, 60, "round:r4")],
                                      parent_id=champ, golden_id=golden)
    assert rep4["carried_rounds"] == [] and len(m4.entries) == 5
    assert load_manifest(store, settings, v1).rounds == ["r1"]
    # another Label Studio project's rounds in the same bucket are not ours to carry
    other = settings.model_copy(deep=True)
    other.label_studio.project_title = "another-model"
    other.rounds.carry_labels = True
    _, m5, rep5 = build_round_version(store, other, "x1", [_entry(store, settings, 61, "round:x1")],
                                      parent_id=champ, golden_id=golden)
    assert rep5["carried_rounds"] == [] and len(m5.entries) == 5


def test_golden_frames_are_never_carried(settings) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    leak = _entry(store, settings, 70, "round:r1")
    champ = save_manifest(store, settings, build_version("train", CLASSES, [_entry(store, settings, 0, "seed")]))
    open_round(store, settings, "r1", "2026-01-26", "4", 1, 0)
    build_round_version(store, settings, "r1", [leak], parent_id=champ, golden_id=None)  # before the golden set
    golden = save_manifest(store, settings, DatasetManifest("golden", CLASSES, [replace(leak, split="golden",
                                                                                          source="golden")]))
    _, m, rep = build_round_version(store, settings, "r2", [_entry(store, settings, 71, "round:r2")],
                                    parent_id=champ, golden_id=golden)
    assert leak.frame_sha not in _shas(m) and rep["carried_entries"] == 0


def test_frames_sent_in_earlier_rounds_are_left_out(settings) -> None:  # type: ignore[no-untyped-def]
    """Overlapping windows (a targeted round inside a weekly one) must not pay for a frame twice."""
    from types import SimpleNamespace

    from tasks.rounds import save_round_frames, sent_keys, without_sent

    store = FakeStore()

    def sent(*keys: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(frame=SimpleNamespace(key=k), arm="selected", rank=i, uncertainty=0.5,
                                strategy="entropy", reason="") for i, k in enumerate(keys)]

    open_round(store, settings, "weekly", "2026-01-26", "4", 2, 0)
    save_round_frames(store, settings, "weekly", sent("a.jpg", "b.jpg"), "4")
    open_round(store, settings, "drift", "2026-01-27", "4", 1, 0)
    save_round_frames(store, settings, "drift", sent("c.jpg"), "4")
    assert sent_keys(store, settings) == {"a.jpg", "b.jpg", "c.jpg"}
    assert sent_keys(store, settings, exclude_round="drift") == {"a.jpg", "b.jpg"}  # a re-run keeps its own
    other = settings.model_copy(deep=True)
    other.label_studio.project_title = "another-model"
    assert sent_keys(store, other) == set()
    frames = [SimpleNamespace(key=k) for k in ("a.jpg", "c.jpg", "d.jpg")]
    kept, dropped = without_sent(frames, sent_keys(store, settings, exclude_round="drift"))
    assert [f.key for f in kept] == ["c.jpg", "d.jpg"] and dropped == 1

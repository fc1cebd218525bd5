"""On the real S3: a round builds on the champion's data and still trains on an earlier rejected round's labels."""

from __future__ import annotations

import uuid

import numpy as np

from detloop.datasets import build_version, load_manifest, save_manifest, store_labelled_frame
from detloop.detections import Detections


def _entry(s, store, tag: str, i: int, source: str):  # type: ignore[no-untyped-def]
    det = Detections(xyxy=np.array([[2.0, 2.0, 20.0, 20.0]]), confidence=np.ones(1), class_id=np.array([i % 2]))
    return store_labelled_frame(store, s.s3.data_bucket, f"{tag}-{i}".encode(), det, width=64, height=64,
                                classes=s.classes, camera="cam3", date="2026-01-27", hour=i % 24, split="train",
                                source=source, key=f"frames/{tag}-{i}.jpg", ext="jpg")


def test_a_rejected_rounds_labels_reach_the_next_version_on_s3(stack_settings):  # type: ignore[no-untyped-def]
    from detloop.clients.s3 import S3Store
    from tasks.round_version import build_round_version
    from tasks.rounds import load_round, open_round

    tag = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(deep=True)
    s.label_studio.project_title = f"detloop-it-carry-{tag}"  # its rounds are carried by this project only
    store = S3Store(s)
    champ = save_manifest(store, s, build_version("train", s.classes, [_entry(s, store, tag, i, "seed")
                                                                        for i in range(3)]))
    ra, rb = f"carry-a-{tag}", f"carry-b-{tag}"
    a = [_entry(s, store, tag, 10 + i, f"round:{ra}") for i in range(4)]
    open_round(store, s, ra, "2026-01-26", None, 4, 0)
    _, ma, _ = build_round_version(store, s, ra, a, parent_id=champ, golden_id=None)  # its challenger: rejected
    b = [_entry(s, store, tag, 20 + i, f"round:{rb}") for i in range(2)]
    open_round(store, s, rb, "2026-02-02", None, 2, 0)
    vb, mb, rep = build_round_version(store, s, rb, b, parent_id=champ, golden_id=None)
    got = {e.frame_sha for e in load_manifest(store, s, vb).entries}
    assert got == {e.frame_sha for e in ma.entries} | {e.frame_sha for e in b}  # no other project's rounds
    assert rep["carried_rounds"] == [ra] and ra in mb.rounds and load_round(store, s, rb).dataset_version == vb
    # a re-run of round b after a crash: the same version, not a second one
    again, _, rep2 = build_round_version(store, s, rb, b, parent_id=champ, golden_id=None)
    assert again == vb and rep2.get("reused") is True

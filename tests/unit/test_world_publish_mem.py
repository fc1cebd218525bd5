"""publish_world / seed / golden against an in-memory S3 stand-in: idempotence, corrupt objects, oracle."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pytest

from detloop.contracts import parse_frame_key
from detloop.datasets import load_manifest
from detloop.errors import DataError
from detloop.settings import load_settings
from detloop.world.publish import oracle_truth, publish_labelled_set, publish_world
from tasks.sampling import check_image_bytes
from tests.fakes import FakeStore


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})


def test_publish_is_idempotent_and_truth_matches_frames(settings) -> None:
    store = FakeStore()
    r = publish_world(settings, date(2026, 1, 5), 2, 3, store=store, threads=4)
    assert r.frames == 2 * 4 * 3 and r.written == r.frames and r.skipped == 0
    prod = [k for (b, k) in store.objects if b == settings.s3.production_bucket]
    assert len(prod) == r.frames
    for k in prod:
        assert parse_frame_key(k) is not None
        img = cv2.imdecode(np.frombuffer(store.objects[(settings.s3.production_bucket, k)], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (480, 640, 3)
        t = oracle_truth(store, settings, k)
        assert len(t) >= 1 and t.class_id.max() < len(settings.classes)
    n = store.puts
    again = publish_world(settings, date(2026, 1, 5), 2, 3, store=store, threads=4)
    assert again.written == 0 and again.skipped == r.frames and store.puts == n
    # a frame whose truth vanished is written again (identical bytes)
    k0 = prod[0]
    before = store.objects[(settings.s3.production_bucket, k0)]
    del store.objects[(settings.s3.oracle_bucket, f"truth/{k0}.json")]
    third = publish_world(settings, date(2026, 1, 5), 2, 3, store=store, threads=2)
    assert third.written == 1 and store.objects[(settings.s3.production_bucket, k0)] == before


def test_corrupt_objects_are_injected_without_truth(settings) -> None:
    store = FakeStore()
    r = publish_world(settings, date(2026, 1, 5), 1, 2, corrupt=3, store=store)
    assert len(r.corrupt_keys) == 3
    bodies = [store.objects[(settings.s3.production_bucket, k)] for k in r.corrupt_keys]
    assert bodies[0] == b""
    assert bodies[1][:2] == b"\xff\xd8"  # a truncated JPEG: starts like one, PIL refuses to load it
    for k, body in zip(r.corrupt_keys, bodies, strict=True):
        assert parse_frame_key(k) is not None  # looks like a frame: the sampler must quarantine it
        with pytest.raises(DataError, match="no ground truth"):
            oracle_truth(store, settings, k)
        # the sampler's checker quarantines every one of them (zero-byte, truncated JPEG, random bytes)
        assert check_image_bytes(body) is not None


def test_seed_and_golden_versions_are_deterministic(settings) -> None:
    store = FakeStore()
    v1 = publish_labelled_set(settings, "seed", frames=24, store=store)
    n = store.puts
    v2 = publish_labelled_set(settings, "seed", frames=24, store=store)
    assert v1 == v2 and store.puts == n  # no new blob, manifest or index entry
    m = load_manifest(store, settings, v1)
    assert m.kind == "seed" and len(m.entries) == 24
    assert set(m.counts()) <= {"train", "val"} and m.counts().get("train", 0) > 0
    groups: dict[tuple, set] = {}
    for e in m.entries:
        groups.setdefault((e.camera, e.date, e.hour), set()).add(e.split)
    assert all(len(s) == 1 for s in groups.values())
    g = publish_labelled_set(settings, "golden", frames=12, store=store)
    gm = load_manifest(store, settings, g)
    assert gm.kind == "golden" and gm.counts() == {"golden": 12}
    assert not {e.frame_sha for e in gm.entries} & {e.frame_sha for e in m.entries}
    assert publish_labelled_set(settings, "seed", frames=24, seed=1, store=store) != v1

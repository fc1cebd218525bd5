"""The synthetic world against the REAL test-stack S3: publish + read back, golden/seed versions, materialize.

Each run writes production frames and truth under its own key prefix (``it-world-<uid>/frames/``) in
the shared buckets, and dataset versions into ONE throw-away data bucket (so other tests'
``latest_version`` never sees these versions); everything is deleted at the end. No more buckets than
that: SeaweedFS gives every bucket its own volumes (7 x 1 GB slots), and the test stack has room for
only a few.
"""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from detloop.clients.s3 import S3Store
from detloop.contracts import parse_frame_key
from detloop.datasets import build_version, list_versions, load_manifest, materialize, save_manifest
from detloop.world.publish import TRUTH_PREFIX, load_world, oracle_truth, publish_labelled_set, publish_world
from detloop.world.render import encode_jpeg, render_frame


@pytest.fixture(scope="module")
def world_settings(stack_settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    uid = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(deep=True)
    s.s3.production_prefix = f"it-world-{uid}/frames/"
    s.s3.data_bucket = f"it-world-data-{uid}"
    s.data_dir = tmp_path_factory.mktemp("world-data")
    yield s
    store = S3Store(s)
    for bucket, prefix in ((s.s3.production_bucket, s.s3.production_prefix),
                           (s.s3.oracle_bucket, f"{TRUTH_PREFIX}{s.s3.production_prefix}"),
                           (s.s3.data_bucket, "")):
        for o in list(store.list(bucket, prefix)):
            store.delete(bucket, o.key)
    store.client.delete_bucket(Bucket=s.s3.data_bucket)  # frees its SeaweedFS volumes


def test_publish_tiny_world_and_read_it_back(world_settings) -> None:
    s = world_settings
    store = S3Store(s)
    r = publish_world(s, date(2026, 1, 25), 2, 2, corrupt=3, store=store, threads=4)
    # 4 cameras on the 25th, 5 from the 26th (cam4 appears)
    assert r.frames == 2 * 4 + 2 * 5 and r.written == r.frames and r.skipped == 0
    keys = sorted(o.key for o in store.list(s.s3.production_bucket, s.s3.production_prefix))
    assert len(keys) == r.frames + 3
    assert set(r.corrupt_keys) <= set(keys)
    cfg = load_world(s)
    good = [k for k in keys if k not in r.corrupt_keys]
    assert {parse_frame_key(k)[0] for k in good} == {"cam0", "cam1", "cam2", "cam3", "cam4"}
    for k in good[:4]:
        cam, day, fid = parse_frame_key(k)
        body = store.get_bytes(s.s3.production_bucket, k)
        idx = int(fid.split("-")[1])
        f = render_frame(cfg, list(s.classes), cam, day, idx, 2, s.world.seed)
        assert body == encode_jpeg(f.image, cfg.jpeg_quality)  # the bytes are the deterministic rendering
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
        assert oracle_truth(store, s, k).equals(f.truth, atol=0.01)
    again = publish_world(s, date(2026, 1, 25), 2, 2, corrupt=3, store=store, threads=4)
    assert again.written == 0 and again.skipped == r.frames
    assert len(list(store.list(s.s3.production_bucket, s.s3.production_prefix))) == len(keys)
    assert store.get_bytes(s.s3.production_bucket, r.corrupt_keys[0]) == b""


def test_golden_version_round_trip_and_materialize(world_settings) -> None:
    s = world_settings
    store = S3Store(s)
    vid = publish_labelled_set(s, "golden", frames=10, store=store)
    assert publish_labelled_set(s, "golden", frames=10, store=store) == vid
    assert [v["id"] for v in list_versions(store, s, "golden")] == [vid]
    m = load_manifest(store, s, vid)
    assert m.kind == "golden" and m.counts() == {"golden": 10}
    y = materialize(store, s, vid, splits=("golden",))
    data = yaml.safe_load(y.read_text())
    assert data["names"] == dict(enumerate(s.classes))
    imgs = Path(data["golden"]).read_text().split()
    assert len(imgs) == 10
    for e in m.entries[:3]:
        img = y.parent / "images" / "golden" / f"{e.frame_sha}.jpg"
        assert cv2.imread(str(img)).shape == (480, 640, 3)
        lines = (y.parent / "labels" / "golden" / f"{e.frame_sha}.txt").read_text().splitlines()
        assert len(lines) == e.n_boxes


def test_seed_child_version_materialize_and_cli(world_settings, monkeypatch) -> None:
    s = world_settings
    store = S3Store(s)
    seed_id = publish_labelled_set(s, "seed", frames=16, store=store)
    seed = load_manifest(store, s, seed_id)
    hard = [type(e)(**{**e.to_dict(), "class_counts": e.class_counts, "hard": True, "source": "round:it"})
            for e in seed.entries[:2]]
    child = build_version("train", s.classes, hard, parent=seed, rounds=["it"])
    child_id = save_manifest(store, s, child)
    assert child.parent == seed_id and len(child.entries) == len(seed.entries)
    y = materialize(store, s, child_id, splits=("train", "val"), oversample=2)
    data = yaml.safe_load(y.read_text())
    n_train = len([e for e in child.entries if e.split == "train"])
    n_hard_train = len([e for e in child.entries if e.split == "train" and e.hard])
    assert len(Path(data["train"]).read_text().split()) == n_train + n_hard_train

    from cli.main import app

    monkeypatch.setenv("DETLOOP_S3__DATA_BUCKET", s.s3.data_bucket)
    runner = CliRunner()
    out = runner.invoke(app, ["dataset", "list"])
    assert out.exit_code == 0, out.output
    assert seed_id in out.output and child_id in out.output
    out = runner.invoke(app, ["dataset", "diff", seed_id, child_id])
    assert out.exit_code == 0, out.output
    assert "2 relabelled" not in out.output  # same labels, only flags changed
    assert "0 relabelled" in out.output and "+0 added" in out.output
    out = runner.invoke(app, ["dataset", "show", child_id])
    assert out.exit_code == 0 and "hard frames: 2" in out.output

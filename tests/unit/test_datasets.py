"""Dataset versions: content ids, grouped stable splits, merge rules, class checks, diff, materialize.

S3 is replaced by an in-memory store with the same methods as ``S3Store`` (pure and fast).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from detloop.datasets import (
    DatasetEntry,
    DatasetManifest,
    assign_split,
    blob_key,
    build_version,
    diff,
    list_versions,
    load_manifest,
    materialize,
    put_blob,
    save_manifest,
    sha256_bytes,
    store_labelled_frame,
)
from detloop.detections import Detections
from detloop.errors import DataError
from detloop.settings import load_settings
from tests.fakes import FakeStore

CLASSES = ["disc", "square", "triangle", "ring", "star"]


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})


def _det(boxes: list[tuple[int, float, float, float, float]]) -> Detections:
    if not boxes:
        return Detections.empty()
    a = np.array(boxes, dtype=np.float64)
    return Detections(xyxy=a[:, 1:], confidence=np.ones(len(a)), class_id=a[:, 0].astype(int))


def _entry(store: FakeStore, i: int, split: str = "train", source: str = "seed", hard: bool = False,
           boxes: list | None = None, arm: str | None = None, camera: str = "cam0", hour: int = 10) -> DatasetEntry:
    img = f"image-{i}".encode()
    det = _det(boxes if boxes is not None else [(i % 5, 10, 10, 40, 40), (0, 50, 50, 80, 90)])
    return store_labelled_frame(
        store, "detloop-data", img, det, width=640, height=480, classes=CLASSES, camera=camera, date="2026-01-05",
        hour=hour, split=split, source=source, arm=arm, hard=hard, key=f"frames/{i}.jpg",
    )


def test_put_blob_is_content_addressed_and_skips_existing() -> None:
    store = FakeStore()
    sha = put_blob(store, "b", b"hello", "txt")
    assert sha == sha256_bytes(b"hello")
    assert ("b", f"blobs/sha256/{sha[:2]}/{sha}.txt") in store.objects
    assert blob_key(sha, ".txt") == f"blobs/sha256/{sha[:2]}/{sha}.txt"
    n = store.puts
    assert put_blob(store, "b", b"hello", "txt") == sha
    assert store.puts == n  # no second upload


def test_version_id_stable_for_same_content_and_changes_with_content(settings) -> None:
    store = FakeStore()
    entries = [_entry(store, i) for i in range(6)]
    m1 = build_version("seed", CLASSES, entries)
    m2 = build_version("seed", CLASSES, list(reversed(entries)))  # order of input does not matter
    assert m1.version_id == m2.version_id and len(m1.version_id) == 16
    m3 = build_version("seed", CLASSES, entries[:5])
    assert m3.version_id != m1.version_id
    vid = save_manifest(store, settings, m1)
    n = store.puts
    assert save_manifest(store, settings, m2) == vid
    assert store.puts == n  # same content: no new object
    back = load_manifest(store, settings, vid)
    assert back.to_dict() == m1.to_dict() and back.version_id == vid
    assert [v["id"] for v in list_versions(store, settings)] == [vid]
    assert list_versions(store, settings, "golden") == []


def test_modified_manifest_is_refused(settings) -> None:
    store = FakeStore()
    vid = save_manifest(store, settings, build_version("seed", CLASSES, [_entry(store, 1)]))
    key = (settings.s3.data_bucket, f"datasets/{vid}/manifest.json")
    d = json.loads(store.objects[key])
    d["entries"][0]["hard"] = True
    store.objects[key] = json.dumps(d).encode()
    with pytest.raises(DataError, match="modified"):
        load_manifest(store, settings, vid)
    with pytest.raises(DataError, match="not found"):
        load_manifest(store, settings, "0" * 16)


def test_assign_split_is_grouped_stable_and_near_share() -> None:
    groups = [(f"cam{c}", f"2026-01-{d:02d}", h) for c in range(4) for d in range(1, 29) for h in range(24)]
    splits = [assign_split(c, d, h, 0.2, salt="s") for c, d, h in groups]
    share = splits.count("val") / len(splits)
    assert 0.17 < share < 0.23
    # same group -> same split, every time (frames of one camera-hour never straddle)
    assert all(assign_split(c, d, h, 0.2, salt="s") == s for (c, d, h), s in zip(groups, splits, strict=True))
    # another salt reshuffles
    other = [assign_split(c, d, h, 0.2, salt="t") for c, d, h in groups]
    assert other != splits
    assert {assign_split("a", "2026-01-01", 1, 0.0)} == {"train"}
    assert {assign_split("a", "2026-01-01", 1, 1.0)} == {"val"}
    with pytest.raises(DataError):
        assign_split("a", "2026-01-01", 1, 1.5)


def test_child_keeps_parent_entries_and_newest_label_wins() -> None:
    store = FakeStore()
    parent = build_version("seed", CLASSES, [_entry(store, i) for i in range(4)])
    relabel = _entry(store, 2, source="round:r1", boxes=[(4, 1, 1, 30, 30)], hard=True)
    new = _entry(store, 10, source="round:r1")
    child = build_version("train", CLASSES, [relabel, new], parent=parent, rounds=["r1"])
    assert child.parent == parent.version_id
    assert child.rounds == ["r1"]
    assert len(child.entries) == 5
    got = {e.frame_sha: e for e in child.entries}
    assert got[relabel.frame_sha].label_sha == relabel.label_sha
    assert got[relabel.frame_sha].source == "round:r1"
    assert [e.frame_sha for e in child.entries] == sorted(got)
    grandchild = build_version("train", CLASSES, [_entry(store, 11, source="round:r2")], parent=child, rounds=["r2"])
    assert grandchild.rounds == ["r1", "r2"]


def test_golden_never_trains_and_control_only_once_retired() -> None:
    store = FakeStore()
    with pytest.raises(DataError, match="control"):
        DatasetManifest("train", CLASSES, [_entry(store, 1, split="golden", arm="control")])
    # a retired control frame (tasks.round_version.retire_controls) may train; arm keeps its provenance
    DatasetManifest("train", CLASSES, [_entry(store, 1, split="train", arm="control")])
    with pytest.raises(DataError, match="golden"):
        DatasetManifest("golden", CLASSES, [_entry(store, 1, split="train")])
    with pytest.raises(DataError, match="golden"):
        DatasetManifest("train", CLASSES, [_entry(store, 1, split="golden")])
    ok = DatasetManifest("train", CLASSES, [_entry(store, 1, split="control", arm="control")])
    assert ok.counts() == {"control": 1}


def test_parent_with_other_classes_refused() -> None:
    store = FakeStore()
    parent = build_version("seed", CLASSES, [_entry(store, 1)])
    with pytest.raises(DataError, match=r"missing \['cube'\]"):
        build_version("train", [*CLASSES, "cube"], [], parent=parent)


def test_diff_counts_added_removed_relabelled_and_boxes() -> None:
    store = FakeStore()
    a = build_version("seed", CLASSES, [_entry(store, i, boxes=[(0, 1, 1, 20, 20)]) for i in range(3)])
    b = build_version(
        "train", CLASSES,
        [_entry(store, 1, boxes=[(4, 1, 1, 20, 20), (4, 30, 30, 50, 50)]), _entry(store, 7, boxes=[(1, 1, 1, 9, 9)])],
        parent=a,
    )
    # drop frame 0 to have a removal
    drop = _entry(store, 0, boxes=[(0, 1, 1, 20, 20)]).frame_sha
    b = DatasetManifest(b.kind, b.classes, [e for e in b.entries if e.frame_sha != drop], b.parent, b.rounds)
    d = diff(a, b)
    assert d.added == [_entry(store, 7).frame_sha]
    assert d.removed == [drop]
    assert d.relabelled == [_entry(store, 1).frame_sha]
    assert d.boxes_a == {"disc": 3, "square": 0, "triangle": 0, "ring": 0, "star": 0}
    assert d.boxes_b == {"disc": 1, "square": 1, "triangle": 0, "ring": 0, "star": 2}
    assert "relabelled" in d.summary()


def test_materialize_writes_yolo_dataset_with_oversampled_hardlinks(settings, tmp_path: Path) -> None:
    store = FakeStore()
    entries = [_entry(store, i, hard=(i == 0)) for i in range(3)] + [_entry(store, 5, split="val")]
    m = build_version("seed", CLASSES, entries)
    vid = save_manifest(store, settings, m)
    y = materialize(store, settings, vid, splits=("train", "val"), oversample=3)
    assert y.parent == settings.data_dir / "cache" / "datasets" / vid
    data = yaml.safe_load(y.read_text())
    assert data["names"] == dict(enumerate(CLASSES))
    train = Path(data["train"]).read_text().split()
    assert len(train) == 3 + 2  # the hard frame listed 3 times
    assert len(set(train)) == len(train)
    hard_sha = next(e.frame_sha for e in entries if e.hard)
    linked = [Path(p) for p in train if hard_sha in p]
    assert len(linked) == 3 and len({p.stat().st_ino for p in linked}) == 1  # hardlinks of one file
    for p in train:
        lbl = Path(p.replace("/images/", "/labels/")).with_suffix(".txt")
        assert lbl.exists()
    # label text round-trips
    e0 = entries[1]
    lbl = (y.parent / "labels" / "train" / f"{e0.frame_sha}.txt").read_text()
    assert sha256_bytes(lbl.encode()) == e0.label_sha
    assert len(Path(data["val"]).read_text().split()) == 1
    # second call reuses the cache: no reads needed
    def no_reads(bucket: str, key: str) -> bytes:
        raise AssertionError(f"unexpected read of {key}")

    store.get_bytes = no_reads  # type: ignore[method-assign]
    assert materialize(store, settings, vid, splits=("train", "val"), oversample=3) == y


def test_materialize_refuses_other_classes(settings) -> None:
    store = FakeStore()
    m = build_version("seed", ["disc", "square", "triangle", "ring", "hexagon"], [_entry(store, 1)])
    vid = save_manifest(store, settings, m)
    with pytest.raises(DataError, match=r"missing \['star'\]; extra \['hexagon'\]"):
        materialize(store, settings, vid)


def test_materialize_golden_only(settings) -> None:
    store = FakeStore()
    m = build_version("golden", CLASSES, [_entry(store, i, split="golden", source="golden") for i in range(2)])
    vid = save_manifest(store, settings, m)
    data = yaml.safe_load(materialize(store, settings, vid, splits=("golden",)).read_text())
    assert data["val"] == data["golden"] == data["train"]
    assert len(Path(data["val"]).read_text().split()) == 2
    with pytest.raises(DataError, match="no frames"):
        materialize(store, settings, vid, splits=("train",))
    train_only = build_version("seed", CLASSES, [_entry(store, 7)])
    with pytest.raises(DataError, match=r"no frames in split\(s\) \['val'\]"):
        materialize(store, settings, save_manifest(store, settings, train_only), splits=("train", "val"))


def test_ultralytics_reads_the_materialized_train_list_with_oversampled_copies(settings) -> None:
    """Ultralytics' dataset loader keeps every oversampled copy (distinct hardlinked paths) with its labels."""
    import cv2
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    store = FakeStore()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(4):
        img = np.full((96, 128, 3), 100, np.uint8)
        cv2.rectangle(img, (10 + i, 10), (40 + i, 40), (0, 0, 255), -1)
        img[0, 0] = rng.integers(0, 255, 3)  # distinct bytes per frame
        body = cv2.imencode(".jpg", img)[1].tobytes()
        det = _det([(i % 5, 10 + i, 10, 40 + i, 40)])
        entries.append(store_labelled_frame(
            store, settings.s3.data_bucket, body, det, width=128, height=96, classes=CLASSES, camera="c",
            date="2026-01-05", hour=i, split="train", source="seed", hard=(i < 2), key=f"k{i}.jpg",
        ))
    vid = save_manifest(store, settings, build_version("seed", CLASSES, entries))
    y = materialize(store, settings, vid, splits=("train",), oversample=3)
    data = check_det_dataset(str(y))
    ds = YOLODataset(img_path=data["train"], imgsz=64, augment=False, data=data, batch_size=2)
    assert len(ds) == 2 * 3 + 2
    assert sum(len(lb["cls"]) for lb in ds.labels) == len(ds)  # every copy kept its one box


def test_missing_index_entry_is_repaired_and_latest_follows_creation(settings) -> None:
    from detloop.datasets import latest_version

    store = FakeStore()
    m1 = build_version("seed", CLASSES, [_entry(store, 1)])
    v1 = save_manifest(store, settings, m1)
    del store.objects[(settings.s3.data_bucket, f"datasets/index/seed/{v1}.json")]
    assert list_versions(store, settings) == []
    assert save_manifest(store, settings, m1) == v1
    assert [v["id"] for v in list_versions(store, settings)] == [v1]
    ids = [v1]
    for i in range(2, 6):  # written in quick succession: order still follows creation
        ids.append(save_manifest(store, settings, build_version("seed", CLASSES, [_entry(store, i)])))
    assert latest_version(store, settings, "seed") == ids[-1]
    assert [v["id"] for v in list_versions(store, settings, "seed")] == ids

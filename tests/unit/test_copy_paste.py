"""Synthetic copy-paste on box labels (tasks/copy_paste.py): pasted labels match pasted pixels, synthetic frames
stay in the train split and never reach golden, control or any evaluation slice, and a synthetic-only gain is
never promoted."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detloop.datasets import DatasetEntry, DatasetManifest, build_version, save_manifest, store_labelled_frame
from detloop.detections import Detections
from detloop.errors import DataError
from detloop.settings import load_settings
from tasks.copy_paste import Cutout, add_synthetic, cut_objects, estimate_mask, paste_objects, rare_classes
from tests.fakes import FakeStore

CLASSES = ["disc", "square", "triangle", "ring", "star"]
BUCKET = "detloop-data"


def det(rows: list[tuple[int, float, float, float, float]]) -> Detections:
    if not rows:
        return Detections.empty()
    a = np.array(rows, dtype=np.float64)
    return Detections(xyxy=a[:, 1:], confidence=np.ones(len(a)), class_id=a[:, 0].astype(np.int64))


def disc_frame(rng: np.random.Generator, size: int = 160, centre: tuple[int, int] = (80, 80), r: int = 20,
               colour: tuple[int, int, int] = (30, 30, 220)) -> tuple[np.ndarray, Detections]:
    """A grey, slightly noisy frame with one filled disc and its tight box."""
    img = np.clip(rng.normal(120, 4, (size, size, 3)), 0, 255).astype(np.uint8)
    cv2.circle(img, centre, r, colour, -1)
    cx, cy = centre
    return img, det([(4, cx - r, cy - r, cx + r + 1, cy + r + 1)])


def test_a_mask_is_estimated_on_a_plain_background_and_not_on_a_busy_one() -> None:
    rng = np.random.default_rng(0)
    img, gt = disc_frame(rng)
    m = estimate_mask(img, gt.xyxy[0])
    assert m is not None
    # the disc's pixels are in, the box's corners (background) out
    assert m[20, 20] > 0.9 and m[0, 0] < 0.1 and m[-1, -1] < 0.1
    assert 0.7 < (m > 0.5).mean() < 0.85  # a disc fills pi/4 of its box
    busy = rng.integers(0, 256, img.shape, dtype=np.uint8)
    cv2.circle(busy, (80, 80), 20, (30, 30, 220), -1)
    cuts = cut_objects(busy, gt, [4])
    assert len(cuts) == 1 and not cuts[0].estimated and (cuts[0].mask == 1).all()  # fallback: the whole box


def test_pasted_labels_match_pasted_pixels() -> None:
    rng = np.random.default_rng(1)
    src, src_gt = disc_frame(rng)
    cuts = cut_objects(src, src_gt, [4])
    assert len(cuts) == 1 and cuts[0].estimated
    target = np.full((240, 320, 3), 200, np.uint8)  # plain: every changed pixel is a pasted one
    tgt_gt = det([(0, 10, 10, 60, 60)])
    for seed in range(5):
        out, labels, n = paste_objects(target, tgt_gt, cuts, np.random.default_rng(seed), 2, blend_px=1.5)
        assert n == 2 and len(labels) == 3 and labels.class_id.tolist() == [0, 4, 4]
        np.testing.assert_array_equal(labels.xyxy[0], tgt_gt.xyxy[0])  # the frame's own labels are kept
        assert (target == 200).all()  # the input is not modified
        changed = np.abs(out.astype(int) - target.astype(int)).max(axis=2) > 20
        inside = np.zeros_like(changed)
        for x1, y1, x2, y2 in labels.xyxy[1:].astype(int):
            inside[y1:y2, x1:x2] = True
            ys, xs = np.nonzero(changed[y1:y2, x1:x2])
            # the object's pixels span its label box (within the feathered edge)
            assert xs.min() <= 3 and ys.min() <= 3 and xs.max() >= x2 - x1 - 4 and ys.max() >= y2 - y1 - 4
            assert changed[y1:y2, x1:x2].mean() > 0.6  # a disc, not a speck
        assert not (changed & ~inside).any()  # nothing pasted outside a label


def test_placement_keeps_overlap_bounded() -> None:
    rng = np.random.default_rng(2)
    cut = Cutout(np.full((30, 30, 3), 50, np.uint8), np.ones((30, 30), np.float32), 4, False)
    target = np.full((200, 200, 3), 200, np.uint8)
    gt = det([(0, 0, 0, 100, 100), (1, 120, 120, 190, 190)])
    for mo in (0.0, 0.2):
        _, labels, n = paste_objects(target, gt, [cut], rng, 6, max_overlap=mo, scale_jitter=0.3)
        assert n >= 1
        b = labels.xyxy
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        for i in range(len(gt), len(b)):
            for j in range(i):
                w = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
                h = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
                assert w * h <= mo * min(area[i], area[j]) + 1e-6
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= 200).all() and (b[:, 3] <= 200).all()


def test_rare_classes() -> None:
    assert rare_classes([100, 100, 5, 0, 10], 0.1) == [2, 4]  # a class with no boxes cannot be pasted
    assert rare_classes([100, 100, 5, 0, 10], 0.1, named=[1]) == [1]
    assert rare_classes([0, 0], 0.1) == []


# ---- dataset versions ------------------------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings("configs/test.yaml", env={}, overrides={
        "data_dir": str(tmp_path / "data"), "evaluation": {"min_instances": 1},
        "training": {"copy_paste": {"enabled": True, "synthetic_share": 1.0, "objects_per_frame": [1, 2],
                                  "rare_share": 0.25}}})


def _frame(store: FakeStore, rng: np.random.Generator, split: str, i: int, star: bool, colour=(30, 30, 220),
           source: str = "seed", arm: str | None = None) -> DatasetEntry:
    img = np.clip(rng.normal(120, 4, (160, 160, 3)), 0, 255).astype(np.uint8)
    rows = [(0, 10, 100, 50, 140)]
    cv2.rectangle(img, (10, 100), (49, 139), (200, 200, 40), -1)
    if star:
        cv2.circle(img, (100, 50), 18, colour, -1)
        rows.append((4, 82, 32, 119, 69))
    _, buf = cv2.imencode(".png", img)
    return store_labelled_frame(store, BUCKET, buf.tobytes(), det(rows), width=160, height=160, classes=CLASSES,
                                camera="cam0", date="2026-01-05", hour=i % 24, split=split, source=source, arm=arm,
                                key=f"frames/{split}-{i}.png", ext="png")


def _versions(store: FakeStore, settings) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    train = [_frame(store, rng, "train", i, star=i < 3) for i in range(12)]
    # a val and a control star of another colour: must never be cut (evaluation objects stay out of training)
    val = [_frame(store, rng, "val", 100 + i, star=True, colour=(20, 220, 20), source="round:r1") for i in range(3)]
    ctl = [_frame(store, rng, "control", 200 + i, star=True, colour=(20, 220, 20), source="round:r1", arm="control")
           for i in range(3)]
    golden = [_frame(store, rng, "golden", 300 + i, star=True) for i in range(3)]
    gid = save_manifest(store, settings, DatasetManifest("golden", CLASSES, golden))
    vid = save_manifest(store, settings, build_version("train", CLASSES, [*train, *val, *ctl], rounds=["r1"]))
    return gid, vid


def test_synthetic_frames_are_train_only_marked_and_never_evaluated(settings) -> None:  # type: ignore[no-untyped-def]
    from tasks.slices import build_slices

    store = FakeStore()
    gid, vid = _versions(store, settings)
    sid, manifest, report = add_synthetic(store, settings, vid)
    assert sid != vid and manifest.parent == vid and report["rare_classes"] == ["star"]
    assert report["cutouts"] == 3  # the 3 train stars; the val and control stars are never cut
    syn = [e for e in manifest.entries if e.synthetic]
    assert len(syn) == report["synthetic_frames"] > 0
    assert all(e.split == "train" and e.source == f"synthetic:{vid}" for e in syn)
    assert {e.frame_sha for e in manifest.entries if not e.synthetic} == {
        e.frame_sha for e in __import__("detloop.datasets", fromlist=["x"]).load_manifest(store, settings, vid).entries}
    # the synthetic frames hold only train-split (red) stars: no pixel of the green val/control stars
    from detloop.datasets import get_blob

    for e in syn:
        img = cv2.imdecode(np.frombuffer(get_blob(store, BUCKET, e.frame_sha, "png"), np.uint8), cv2.IMREAD_COLOR)
        green = (img[..., 1] > 180) & (img[..., 0] < 60) & (img[..., 2] < 60)
        assert green.sum() < 5
        assert e.class_counts[4] >= 1
    # every evaluation slice of the round, built from the synthetic version, holds real frames only
    slices = build_slices(store, settings, gid, sid, "r1")
    assert {s.name for s in slices} >= {"golden", "round", "control"}
    syn_shas = {e.frame_sha for e in syn}
    for s in slices:
        assert not {Path(it.image).name.split(".")[0] for it in s.items} & syn_shas, s.name
    # deterministic: the same version and settings give the same synthetic version
    assert add_synthetic(store, settings, vid)[0] == sid


def test_manifests_refuse_synthetic_frames_outside_train(settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    store = FakeStore()
    e = _frame(store, np.random.default_rng(4), "train", 0, star=True)
    assert "synthetic" not in e.to_dict()  # real entries serialise as before: existing version ids do not move
    for split in ("val", "control"):
        with pytest.raises(DataError, match="synthetic frames belong in split 'train'"):
            DatasetManifest("train", CLASSES, [replace(e, split=split, synthetic=True,
                                                       arm="control" if split == "control" else None)])
    with pytest.raises(DataError):
        DatasetManifest("golden", CLASSES, [replace(e, split="golden", synthetic=True)])


def test_a_new_round_does_not_inherit_synthetic_frames(settings) -> None:  # type: ignore[no-untyped-def]
    from tasks.round_version import build_round_version

    store = FakeStore()
    gid, vid = _versions(store, settings)
    sid, _, _ = add_synthetic(store, settings, vid)
    new = _frame(store, np.random.default_rng(5), "train", 50, star=False, source="round:r2")
    _, manifest, _ = build_round_version(store, settings, "r2", [new], parent_id=sid, golden_id=gid)
    assert not any(e.synthetic for e in manifest.entries) and new.frame_sha in {e.frame_sha for e in manifest.entries}


def test_a_golden_version_gets_no_synthetic_frames_and_unknown_classes_are_refused(settings) -> None:  # type: ignore[no-untyped-def]
    from detloop.errors import ConfigError

    store = FakeStore()
    gid, vid = _versions(store, settings)
    with pytest.raises(DataError, match="golden"):
        add_synthetic(store, settings, gid)
    settings.training.copy_paste.classes = ["unicorn"]
    with pytest.raises(ConfigError, match=r"training\.copy_paste\.classes.*unicorn"):
        add_synthetic(store, settings, vid)


def test_a_synthetic_only_gain_is_not_promoted(settings) -> None:  # type: ignore[no-untyped-def]
    """A challenger perfect on synthetic frames but no better on real ones: the gate, on the slices of the
    round (real frames only), does not promote it; were the synthetic frames evaluated, it would be."""
    from tasks.evaluation import EvalReport, compute_metrics, gate_scores
    from tasks.promotion import decide
    from tasks.slices import build_slices

    store = FakeStore()
    gid, vid = _versions(store, settings)
    sid, manifest, _ = add_synthetic(store, settings, vid)
    syn = {e.frame_sha for e in manifest.entries if e.synthetic}
    slices = build_slices(store, settings, gid, sid, "r1")

    def predict(items, model: str) -> list[Detections]:  # type: ignore[no-untyped-def]
        out = []
        for it in items:
            is_syn = Path(it.image).name.split(".")[0] in syn
            g = it.gt
            if model == "challenger" and is_syn:
                out.append(Detections(g.xyxy, np.ones(len(g)), g.class_id))  # perfect where synthetic
            else:  # both models: the star found, the other box shifted (the same real-frame accuracy)
                xy = g.xyxy.copy()
                xy[g.class_id != 4] += 6
                out.append(Detections(xy, np.full(len(g), 0.9), g.class_id))
        return out

    def report(model: str, sl) -> EvalReport:  # type: ignore[no-untyped-def]
        m = {s.name: compute_metrics(s.name, [i.gt for i in s.items], predict(s.items, model), CLASSES,
                                     min_instances=1) for s in sl}
        return EvalReport(model, m)

    gate = settings.gate.model_copy(update={"min_delta": 0.01})
    d = decide(gate_scores(report("challenger", slices)), gate_scores(report("champion", slices)), gate)
    assert not d.passed
    # the contrast: a 'golden' slice that (wrongly) held the synthetic frames would promote the challenger
    from tasks.evaluation import EvalSlice
    from tasks.slices import items_from_version

    leaky = [EvalSlice("golden", items_from_version(store, settings, sid, "train"))]
    d2 = decide(gate_scores(report("challenger", leaky)), gate_scores(report("champion", leaky)), gate)
    assert d2.passed, d2.reasons

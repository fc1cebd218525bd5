"""The synthetic world: determinism, drift knobs, sizes, rare class, crowds, truth format (pure, no S3)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from detloop.contracts import frame_hour, parse_frame_key
from detloop.detections import UnknownLabelsError
from detloop.settings import ConfigError
from detloop.world.config import WorldConfig, load_world_config
from detloop.world.publish import frame_key, plan_production, plan_stream
from detloop.world.render import (
    box_iou_xyxy,
    conditions,
    encode_jpeg,
    render_frame,
    truth_from_json,
    truth_to_json,
)

CLASSES = ["disc", "square", "triangle", "ring", "star"]
WORLD_YAML = Path(__file__).resolve().parents[2] / "configs" / "world.yaml"


@pytest.fixture(scope="module")
def cfg() -> WorldConfig:
    return load_world_config(WORLD_YAML)


def _raw() -> dict:
    return yaml.safe_load(WORLD_YAML.read_text())


def _cfg_with(**changes) -> WorldConfig:
    raw = _raw()
    raw.update(changes)
    return WorldConfig.model_validate(raw)


def _frames(cfg: WorldConfig, camera: str, day: date, n: int, seed: int = 0, stream: str = "production"):
    return [render_frame(cfg, CLASSES, camera, day, i, n, seed, stream) for i in range(n)]


# ---- config ---------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_bad_refs(tmp_path: Path) -> None:
    raw = _raw()
    raw["objects"]["colour"] = 1
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"objects\.colour: unknown key"):
        load_world_config(p)
    raw = _raw()
    raw["drift"] = [{"name": "x", "start": "2026-01-01", "cameras": ["nope"]}]
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown cameras"):
        load_world_config(p)
    with pytest.raises(ConfigError, match="missing"):
        load_world_config(WORLD_YAML).check_classes([*CLASSES, "hexagon"])


# ---- determinism -----------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_truth_other_seed_differs(cfg: WorldConfig) -> None:
    d = date(2026, 1, 7)
    a = render_frame(cfg, CLASSES, "cam1", d, 5, 40, seed=3)
    b = render_frame(cfg, CLASSES, "cam1", d, 5, 40, seed=3)
    assert encode_jpeg(a.image) == encode_jpeg(b.image)
    assert np.array_equal(a.image, b.image)
    assert a.truth.equals(b.truth, atol=0) and a.frame_id == b.frame_id
    c = render_frame(cfg, CLASSES, "cam1", d, 5, 40, seed=4)
    assert not np.array_equal(a.image, c.image)
    g = render_frame(cfg, CLASSES, "cam1", d, 5, 40, seed=3, stream="golden")
    assert not np.array_equal(a.image, g.image)  # labelled streams never repeat production frames


def test_frame_ids_encode_the_hour_and_keys_parse(cfg: WorldConfig) -> None:
    class S:  # the one settings field frame_key reads
        class s3:
            production_prefix = "frames/"

    plan = list(plan_production(cfg, 0, date(2026, 1, 5), 2, 24))
    assert len(plan) == 2 * 4 * 24  # cam4 appears later
    hours = sorted({p.hour for p in plan})
    assert hours == list(range(24))  # 24 frames per day: one per hour slot
    for p in plan[:30]:
        assert frame_hour(p.frame_id) == p.hour
        key = frame_key(S, p.camera, p.day, p.frame_id)  # type: ignore[arg-type]
        assert key.startswith(f"frames/camera={p.camera}/date={p.day.isoformat()}/")
        assert parse_frame_key(key) == (p.camera, p.day, p.frame_id)
    assert len({(p.camera, p.day, p.frame_id) for p in plan}) == len(plan)


def test_new_camera_appears_from_its_date(cfg: WorldConfig) -> None:
    assert "cam4" not in cfg.active_cameras(date(2026, 1, 25))
    assert "cam4" in cfg.active_cameras(date(2026, 1, 26))
    days = {p.camera for p in plan_production(cfg, 0, date(2026, 1, 24), 4, 1)}
    assert "cam4" in days


# ---- drift knobs -------------------------------------------------------------------------------------
def test_brightness_drift_moves_mean_intensity_by_the_configured_offset() -> None:
    raw = _raw()
    raw["drift"] = [{"name": "bright", "start": "2026-01-10", "cameras": ["cam0"], "brightness": 40}]
    raw["nuisance"]["day_night"] = 0.0
    cfg = WorldConfig.model_validate(raw)
    before = np.mean([f.image.mean() for f in _frames(cfg, "cam0", date(2026, 1, 9), 12)])
    after = np.mean([f.image.mean() for f in _frames(cfg, "cam0", date(2026, 1, 10), 12)])
    other = np.mean([f.image.mean() for f in _frames(cfg, "cam1", date(2026, 1, 10), 12)])
    other_before = np.mean([f.image.mean() for f in _frames(cfg, "cam1", date(2026, 1, 9), 12)])
    assert 30 < after - before < 46  # +40 minus a little saturation, within object/jitter noise
    assert abs(other - other_before) < 6  # cam1 is not affected


def test_contrast_and_dusk_drift_of_shipped_config(cfg: WorldConfig) -> None:
    dusk = next(d for d in cfg.drift if d.name == "cam1-dusk")
    c0 = conditions(cfg, CLASSES, "cam1", dusk.start - timedelta(days=1))
    c1 = conditions(cfg, CLASSES, "cam1", dusk.start)
    assert c0.drifts == () and c1.drifts == ("cam1-dusk",)
    assert c1.brightness == dusk.brightness < 0 and dusk.contrast < 1
    assert c1.contrast == pytest.approx(dusk.contrast)
    before = _frames(cfg, "cam1", dusk.start - timedelta(days=1), 8)
    after = _frames(cfg, "cam1", dusk.start, 8)
    assert np.mean([f.image.std() for f in after]) < np.mean([f.image.std() for f in before])
    assert np.mean([f.image.mean() for f in after]) < np.mean([f.image.mean() for f in before]) - 30


def _class_share(frames) -> np.ndarray:
    counts = np.zeros(len(CLASSES))
    for f in frames:
        counts += np.bincount(f.truth.class_id, minlength=len(CLASSES))
    return counts / counts.sum()


def test_rare_star_share_and_class_mix_shift(cfg: WorldConfig) -> None:
    base = [f for c in ("cam0", "cam3") for f in _frames(cfg, c, date(2026, 1, 6), 90)]
    share = _class_share(base)
    assert 0.015 < share[4] < 0.05, share  # ~3 % stars
    p = conditions(cfg, CLASSES, "cam0", date(2026, 2, 2)).class_probs
    assert p[4] == pytest.approx(0.15 / (1.0 - 0.03 + 0.15))
    shifted = [f for c in ("cam0", "cam3") for f in _frames(cfg, c, date(2026, 2, 2), 90)]
    s2 = _class_share(shifted)
    assert 0.09 < s2[4] < 0.18, s2
    assert s2[4] > 3 * share[4]


def test_object_sizes_floor_and_size_drift(cfg: WorldConfig) -> None:
    def sizes(frames):
        return np.concatenate([np.maximum(f.truth.xyxy[:, 2] - f.truth.xyxy[:, 0],
                                          f.truth.xyxy[:, 3] - f.truth.xyxy[:, 1]) for f in frames])

    start = next(d for d in cfg.drift if d.name == "cam2-zoom-out").start
    before = sizes(_frames(cfg, "cam2", start - timedelta(days=1), 60))
    after = sizes(_frames(cfg, "cam2", start, 60))
    assert before.min() >= cfg.objects.min_size_px - 0.5  # >= 6 px at model input 320
    assert after.min() >= cfg.objects.min_size_px - 0.5
    assert before.max() <= cfg.objects.size_px.max + 0.5
    scale = next(d for d in cfg.drift if d.name == "cam2-zoom-out").size_scale
    ratio = np.median(after) / np.median(before)
    assert 0.8 * scale < ratio < 1.3 * scale, (ratio, scale)  # floored at 12 px, so a little above the scale
    small = (before < 32).mean()
    assert 0.25 < small < 0.8  # many COCO-small objects


def test_crowds_overlap_within_configured_iou(cfg: WorldConfig) -> None:
    frames = _frames(cfg, "cam0", date(2026, 1, 6), 80)
    ious, crowd_frames = [], 0
    for f in frames:
        anchor = f.truth.data["anchor"]
        crowd = f.truth.data["crowd"]
        if (crowd >= 0).sum() >= 2:
            crowd_frames += 1
            assert len(set(f.truth.class_id[crowd >= 0].tolist())) == 1  # one class per crowd
        for i in np.flatnonzero(anchor >= 0):
            ious.append(box_iou_xyxy(tuple(f.truth.xyxy[i]), tuple(f.truth.xyxy[anchor[i]])))
    assert crowd_frames >= 0.15 * len(frames)
    assert len(ious) >= 20
    assert min(ious) >= cfg.crowd.iou.min - 0.02 and max(ious) <= cfg.crowd.iou.max + 0.02
    assert np.ptp(ious) > 0.2  # spread over the range, not one value


def test_truth_is_visible_inside_the_frame_and_round_trips(cfg: WorldConfig) -> None:
    for f in _frames(cfg, "cam4", date(2026, 2, 1), 20):
        t = f.truth
        assert (t.data["visible"] >= cfg.objects.min_visible).all()
        assert (t.xyxy[:, 0] >= 0).all() and (t.xyxy[:, 2] <= cfg.width).all()
        assert (t.xyxy[:, 1] >= 0).all() and (t.xyxy[:, 3] <= cfg.height).all()
        d = truth_to_json(f, CLASSES, key="k")
        back = truth_from_json(d, CLASSES)
        assert back.equals(t, atol=0.01)
        assert {b["class"] for b in d["boxes"]} <= set(CLASSES)
    d["boxes"].append({"xyxy": [0, 0, 5, 5], "class": "cube"})
    with pytest.raises(UnknownLabelsError):
        truth_from_json(d, CLASSES)


def test_labelled_stream_plan_is_deterministic_and_spans_cameras(cfg: WorldConfig) -> None:
    a = plan_stream(cfg, 0, "golden", cfg.golden_set.start, cfg.golden_set.days, 200)
    b = plan_stream(cfg, 0, "golden", cfg.golden_set.start, cfg.golden_set.days, 200)
    assert a == b
    assert {p.camera for p in a} == {c.id for c in cfg.cameras}  # golden covers every camera, cam4 included
    last = cfg.golden_set.start + timedelta(days=cfg.golden_set.days - 1)
    assert all(cfg.golden_set.start <= p.day <= last for p in a)
    seed_plan = plan_stream(cfg, 0, "seed", cfg.seed_set.start, cfg.seed_set.days, cfg.seed_set.frames)
    assert max(p.day for p in seed_plan) < date(2026, 1, 5)  # seed set predates production and every drift


def test_repaint_drift_changes_class_colours_on_its_camera_only(cfg: WorldConfig) -> None:
    rep = next(d for d in cfg.drift if d.class_colors)
    cam = rep.cameras[0]
    other = next(c.id for c in cfg.cameras if c.id not in rep.cameras)
    i = CLASSES.index(next(iter(rep.class_colors)))
    assert conditions(cfg, CLASSES, cam, rep.start).colors[i] == tuple(rep.class_colors[CLASSES[i]])
    assert conditions(cfg, CLASSES, cam, rep.start - timedelta(days=1)).colors[i] == tuple(cfg.classes[CLASSES[i]].color)
    assert conditions(cfg, CLASSES, other, rep.start).colors[i] == tuple(cfg.classes[CLASSES[i]].color)

    def mean_colour(frames) -> np.ndarray:  # mean BGR inside boxes of class i (centre patch)
        px = []
        for f in frames:
            for (x1, y1, x2, y2), c in zip(f.truth.xyxy, f.truth.class_id, strict=True):
                if c == i and CLASSES[i] == "square":
                    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
                    px.append(f.image[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).mean(0))
        return np.mean(px, 0)

    before = mean_colour(_frames(cfg, cam, rep.start - timedelta(days=1), 40))
    after = mean_colour(_frames(cfg, cam, rep.start, 40))
    shift = np.array(rep.class_colors[CLASSES[i]], float) - np.array(cfg.classes[CLASSES[i]].color, float)
    moved = after - before
    assert np.dot(moved, shift) / np.linalg.norm(shift) > 0.4 * np.linalg.norm(shift)  # most of the way

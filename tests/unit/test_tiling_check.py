"""Pure parts of ``tasks.tiling_check`` (``detloop drift tiling``): variant spellings, the tiled settings, which
labelled frames a champion never saw, the advice and the table. The scoring itself runs against the real stack in
tests/integration/test_tiling_check.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detloop.datasets import DatasetEntry
from detloop.detections import Detections
from detloop.errors import ConfigError
from detloop.settings import load_settings
from tasks.tiling_check import (
    VariantScore,
    advice,
    gain_interval,
    markdown,
    parse_variant,
    unseen_entries,
    with_tiling,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_variants_parse_to_tiling_overrides_and_bad_ones_are_named() -> None:
    assert parse_variant("whole") is None
    assert parse_variant("t320") == {"enabled": True, "tile": 320, "full_frame": False}
    assert parse_variant("t256f") == {"enabled": True, "tile": 256, "full_frame": True}
    for bad in ("tiled", "t", "320", "t16"):
        with pytest.raises(ConfigError, match=repr(bad)):
            parse_variant(bad)


def test_only_the_named_camera_is_tiled_and_the_override_is_validated() -> None:
    s = load_settings(CONFIGS / "soak.yaml", env={},
                      overrides={"model": {"tiling": {"cameras": {"cam1": {"enabled": True}}}}})
    t = with_tiling(s, "cam2", parse_variant("t320"))
    assert t.model.tile_spec("cam0") is None and t.model.tile_spec("cam1") is not None  # others untouched
    spec = t.model.tile_spec("cam2")
    assert spec is not None and spec.tile == 320 and not spec.full_frame
    assert with_tiling(t, "cam2", None).model.tile_spec("cam2") is None
    assert s.model.tile_spec("cam2") is None  # the original settings are not changed
    with pytest.raises(ValueError, match="overlap must be in"):
        with_tiling(s, "cam2", {"enabled": True, "tile": 64})  # the default 64-px overlap is not below the tile


def test_whole_means_whole_when_the_section_tiles_every_camera() -> None:
    s = load_settings(CONFIGS / "soak.yaml", env={}, overrides={"model": {"tiling": {"enabled": True}}})
    assert s.model.tile_spec("cam2") is not None
    w = with_tiling(s, "cam2", None)
    assert w.model.tile_spec("cam2") is None and w.model.tile_spec("cam0") is not None


def _e(sha: str, camera: str = "cam2", day: str = "2026-02-10", split: str = "train",
       synthetic: bool = False) -> DatasetEntry:
    return DatasetEntry(sha, "l" + sha, 640, 480, camera, day, 12, split, "round:r", synthetic=synthetic)


def test_unseen_frames_are_the_cameras_frames_the_champion_never_trained_on() -> None:
    entries = [
        _e("a"),                      # train, labelled after the champion: unseen
        _e("b"),                      # train, in the champion's version: seen
        _e("c", split="val"), _e("d", split="golden"), _e("e", split="control"),  # never trained on by anyone
        _e("f", camera="cam0"),       # another camera
        _e("g", day="2026-02-01"),    # before --since
        _e("h", synthetic=True),      # copy-paste frames are never evaluated on
        _e("a", split="val"),         # the same frame twice: once
    ]
    got = unseen_entries(entries, trained={"b", "c"}, camera="cam2", since="2026-02-09")
    assert [e.frame_sha for e in got] == ["a", "c", "d", "e"]  # a val frame counts even if its sha was trained
    assert [e.frame_sha for e in unseen_entries(entries, set(), "cam2")] == ["a", "b", "c", "d", "e", "g"]


def _s(v: str, m50: float | None, m: float | None = 0.4, spf: float = 0.01) -> VariantScore:
    return VariantScore(v, m50, m, None, spf)


def test_the_advice_names_the_best_tiled_variant_only_when_it_pays() -> None:
    gain = advice("cam2", [_s("whole", 0.70), _s("t320", 0.78, 0.5, 0.05), _s("t320f", 0.76, 0.5, 0.06)], 48)
    assert gain.startswith("cam2: t320 is +0.080 mAP50") and "5.0x the scoring time" in gain
    assert "model.tiling.cameras.cam2: {enabled: true, tile: 320, full_frame: false}" in gain
    assert "48 labelled frames" in gain
    keep = advice("cam0", [_s("whole", 0.80), _s("t320f", 0.81, 0.5, 0.06)], 30)
    assert keep.startswith("cam0: keep whole frames") and "+0.010" in keep and "6.0x" in keep
    assert advice("cam0", [_s("whole", 0.80)], 30).startswith("cam0: nothing to compare")
    assert advice("cam0", [_s("whole", None), _s("t320", None)], 30).startswith("cam0: nothing to compare")


def test_a_gain_within_the_noise_is_not_advised() -> None:
    sure = advice("cam2", [_s("whole", 0.70), VariantScore("t320", 0.75, 0.5, None, 0.05, (0.01, 0.09))], 200)
    assert sure.startswith("cam2: t320 is +0.050 [+0.010, +0.090] mAP50") and "model.tiling.cameras.cam2" in sure
    noisy = advice("cam2", [_s("whole", 0.70), VariantScore("t320", 0.75, 0.5, None, 0.05, (-0.02, 0.11))], 60)
    assert noisy.startswith("cam2: not yet: t320 is +0.050 [-0.020, +0.110]") and "label more" in noisy
    assert "model.tiling" not in noisy


def test_the_table_has_a_row_per_variant_with_its_gain_and_cost() -> None:
    md = markdown("cam2", [_s("whole", 0.7, 0.45, 0.02), VariantScore("t320", 0.8, 0.5, 0.31, 0.1, (0.02, 0.15))])
    assert "| whole | 0.700 | - | 0.450 | - | 20 | 1.0x |" in md
    assert "| t320 | 0.800 | [+0.020, +0.150] | 0.500 | 0.310 | 100 | 5.0x |" in md


def _dets(boxes: np.ndarray, classes: np.ndarray, conf: np.ndarray | None = None) -> Detections:
    return Detections(xyxy=boxes, confidence=np.ones(len(boxes)) if conf is None else conf, class_id=classes)


def test_the_gain_interval_is_paired_over_frames() -> None:
    rng = np.random.default_rng(0)
    gts, good, bad = [], [], []
    for _ in range(40):
        xy = rng.uniform(0, 500, (4, 2))
        b = np.hstack([xy, xy + rng.uniform(15, 60, (4, 2))])
        c = rng.integers(0, 2, 4)
        gts.append(_dets(b, c))
        good.append(_dets(b + rng.normal(0, 1, b.shape), c, rng.uniform(0.5, 1, 4)))
        bad.append(_dets(b[:2] + rng.normal(0, 1, (2, 4)), c[:2], rng.uniform(0.5, 1, 2)))  # half the objects missed
    same = gain_interval(gts, good, good, ["a", "b"], n_boot=50)
    assert same == (0.0, 0.0)  # the same predictions on every resample: no gain, no spread
    lo, hi = gain_interval(gts, bad, good, ["a", "b"], n_boot=50) or (0.0, 0.0)
    assert 0.2 < lo <= hi < 0.8  # finding the missed half is a clear gain
    lo2, hi2 = gain_interval(gts, good, bad, ["a", "b"], n_boot=50) or (0.0, 0.0)
    assert hi2 < 0 and lo2 == pytest.approx(-hi, abs=0.1)
    assert gain_interval([Detections.empty(2)] * 3, [Detections.empty(2)] * 3, [Detections.empty(2)] * 3,
                         ["a", "b"], n_boot=5) is None  # no ground truth anywhere

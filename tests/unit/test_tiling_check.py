"""Pure parts of ``tasks.tiling_check`` (``detloop drift tiling``): variant spellings, the tiled settings, which
labelled frames a champion never saw, the advice and the table. The scoring itself runs against the real stack in
tests/integration/test_tiling_check.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from detloop.datasets import DatasetEntry
from detloop.errors import ConfigError
from detloop.settings import load_settings
from tasks.tiling_check import VariantScore, advice, markdown, parse_variant, unseen_entries, with_tiling

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


def test_the_table_has_a_row_per_variant_with_its_cost() -> None:
    md = markdown("cam2", [_s("whole", 0.7, 0.45, 0.02), VariantScore("t320", 0.8, 0.5, 0.31, 0.1)])
    assert "| whole | 0.700 | 0.450 | - | 20 | 1.0x |" in md
    assert "| t320 | 0.800 | 0.500 | 0.310 | 100 | 5.0x |" in md

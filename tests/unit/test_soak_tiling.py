"""Pure parts of ``benchmarks.soak_tiling``: variant spellings, the tiled settings, the soak's weeks, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak_tiling import onsets_of, parse_variant, table, week_days, with_tiling
from detloop.settings import load_settings

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_variants_parse_to_tiling_overrides_and_bad_ones_are_named() -> None:
    assert parse_variant("whole") is None
    assert parse_variant("t320") == {"enabled": True, "tile": 320, "full_frame": False}
    assert parse_variant("t256f") == {"enabled": True, "tile": 256, "full_frame": True}
    for bad in ("tiled", "t", "320", "t16"):
        with pytest.raises(ValueError, match=repr(bad)):
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


def test_weeks_pair_each_champion_with_its_truth_day_and_the_table_shows_cost() -> None:
    soak = {"rows": [{"week": 1, "as_of": "2026-01-12"}, {"week": 2, "as_of": "2026-01-19"}],
            "truth": {"weeks": {"1": {"champion": None}, "2": {"champion": "3", "true": {}}},
                      "recovery": [{"camera": "cam2", "onset_week": 2, "lowered": True},
                                   {"camera": "cam0", "onset_week": 2, "lowered": False}]}}
    assert week_days(soak) == {2: ("3", "2026-01-19")}
    assert onsets_of(soak) == {"cam2": 2}
    r = {"cameras": {"cam2": {2: {"champion": "3", "variants": {
        "whole": {"map50": 0.5, "map": 0.3, "seconds_per_frame": 0.02},
        "t320": {"map50": 0.6, "map": 0.4, "seconds_per_frame": 0.12}}}}}}
    md = table(r, ["whole", "t320"], onsets_of(soak))
    assert "| cam2 | 2 (onset) | v3 | 0.500 / 0.300 | 0.600 / 0.400 | 6.0x |" in md

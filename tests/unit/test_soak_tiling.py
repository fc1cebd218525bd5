"""Pure parts of ``benchmarks.soak_tiling``: the soak's weeks, the table (its variants: tests/unit/test_tiling_check.py)."""

from __future__ import annotations

from benchmarks.soak_tiling import onsets_of, table, week_days


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

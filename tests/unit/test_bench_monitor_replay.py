"""The monitor replay's bookkeeping (benchmarks/monitor_replay.py): variants, stationary days, false alarms."""

from __future__ import annotations

import pytest

from benchmarks.monitor_replay import false_alarms, parse_variant, stationary_until


def test_a_variant_is_a_name_and_drift_overrides() -> None:
    assert parse_variant("off:permutations_refine=null") == ("off", {"permutations_refine": None})
    assert parse_variant("big:permutations_refine=99999,alpha=0.05") == (
        "big", {"permutations_refine": 99999, "alpha": 0.05})
    assert parse_variant("c:correction=\"bonferroni\"") == ("c", {"correction": "bonferroni"})
    for bad in ("nocolon", ":a=1", "x:a", "x:=1"):
        with pytest.raises(ValueError, match="--variant"):
            parse_variant(bad)


def test_drift_settings_on_the_command_line_are_key_values_validated_by_the_settings() -> None:
    from benchmarks._common import drift_with, parse_settings
    from detloop.settings import load_settings

    over = parse_settings("pool_days=3,alarm_strong_alpha=0.002,correction=fdr", "--drift")
    assert over == {"pool_days": 3, "alarm_strong_alpha": 0.002, "correction": "fdr"}
    d = drift_with(load_settings("configs/test.yaml", env={}), over)
    assert d.pool_days == 3 and d.alarm_strong_alpha == 0.002
    with pytest.raises(ValueError, match="pool_days"):
        drift_with(load_settings("configs/test.yaml", env={}), {"pool_days": 0})
    with pytest.raises(ValueError, match="--drift"):
        parse_settings("pool_days", "--drift")


def test_false_alarms_count_only_a_cameras_days_before_its_first_onset() -> None:
    onsets = [{"name": "dusk", "camera": "cam1", "onset": "2026-01-19"},
              {"name": "stars", "camera": "cam1", "onset": "2026-02-02"},
              {"name": "stars", "camera": "cam0", "onset": "2026-02-02"}]
    until = stationary_until(onsets, ["cam0", "cam1", "cam5"])
    assert until == {"cam0": "2026-02-02", "cam1": "2026-01-19", "cam5": None}
    statuses = {"1": {"2026-01-18": {"cam0": "clean", "cam1": "drift", "cam5": "insufficient"},
                      "2026-01-19": {"cam0": "drift", "cam1": "drift", "cam5": "clean"}},
                "2": {"2026-02-02": {"cam0": "drift", "cam1": "drift", "cam5": "drift"}}}
    eps = [{"opened_on": "2026-01-19", "cameras": ["cam0", "cam1"]}, {"opened_on": "2026-02-03", "cameras": ["cam5"]}]
    fa = false_alarms(statuses, eps, until)
    # judged: 01-18 cam0, cam1 (cam5 insufficient); 01-19 cam0, cam5; 02-02 cam5 (cam0 and cam1 have drifted by then)
    assert fa["stationary_camera_days"] == 5
    assert fa["drifted"] == 3 and fa["drifted_on"] == ["v1 cam1 2026-01-18", "v1 cam0 2026-01-19", "v2 cam5 2026-02-02"]
    assert fa["episodes"] == 2 and fa["episodes_on"] == ["2026-01-19 cam0", "2026-02-03 cam5"]
    twice = false_alarms({**statuses, "3": statuses["1"]}, eps + eps[:1], until)  # another champion, same days
    assert twice["stationary_camera_days"] == 9 and twice["drifted"] == 5
    assert (twice["unique_camera_days"], twice["unique_drifted"], twice["episodes"]) == (5, 3, 2)


def test_a_variant_is_summarised_from_its_stored_records() -> None:
    from benchmarks.monitor_replay import headline, summarise

    onsets = [{"name": "zoom", "camera": "cam2", "onset": "2026-02-09"}]
    variant = {"seconds": 12.0, "versions": {
        "18": {"episodes": [{"episode_id": "drift-v18-2026-02-12", "opened_on": "2026-02-12", "cameras": ["cam2"]}],
               "statuses": {"2026-02-08": {"cam2": "clean", "cam0": "drift"},
                            "2026-02-12": {"cam2": "drift", "cam0": "clean"}}}}}
    got = summarise(variant, onsets, ["cam0", "cam2"])
    assert [(o["detected"], o["delay_days"]) for o in got["onsets"]] == [(True, 3)]
    # cam0 has no onset: both its days are stationary, one drifted; cam2's day before its onset is clean
    assert (got["false_alarms"]["unique_camera_days"], got["false_alarms"]["unique_drifted"]) == (3, 1)
    line = headline({"variants": {"x": {**variant, **got}}})["x"]
    assert line.startswith("1/1 onsets, 1/3 stationary camera-days drifted") and "12 s" in line
    assert "companions" not in line
    joined = {**variant, "versions": {"18": {**variant["versions"]["18"], "episodes": [
        {**variant["versions"]["18"]["episodes"][0], "cameras": ["cam0", "cam2"], "companions": {"cam0": "why"}}]}}}
    line = headline({"variants": {"x": {**joined, **summarise(joined, onsets, ["cam0", "cam2"])}}})["x"]
    assert line.endswith("companions joined: 2026-02-12 cam0") and "1 false episode(s)" in line  # cam0: no onset
    missed = summarise({**variant, "versions": {"18": {"episodes": [], "statuses": {}}}}, onsets, ["cam2"])
    assert missed["onsets"][0]["detected"] is False

"""The soak's carried-labels replay: its table (the replay itself needs a finished soak's stack)."""

from benchmarks.soak_carry import table


def test_table_puts_the_run_and_the_replay_side_by_side() -> None:
    rows = [{"round": "soak-2026-02-02", "carried_entries": 138, "champion_true": {"cam3": 0.417, "cam2": 0.717},
             "carried_true": {"cam3": 0.514, "cam2": 0.726}, "carried_gate": {"outcome": "passed"},
             "as_run": {"outcome": "rejected", "true": {"cam3": 0.44}}}]
    md = table(rows)
    assert "| soak-2026-02-02 | cam3 | 0.417 | 0.440 (rejected) | 0.514 (passed) | 138 |" in md
    assert "| soak-2026-02-02 | cam2 | 0.717 | - (rejected) | 0.726 (passed) | 138 |" in md
    no_run = table([{**rows[0], "as_run": None}])
    assert "| - (-) |" in no_run

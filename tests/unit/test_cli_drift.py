"""``detloop drift episodes``: what one line says about an episode."""

from __future__ import annotations

from cli.drift import episode_line
from tasks.drift import Episode


def test_an_episode_line_names_its_companions_and_the_cameras_it_found_later() -> None:
    e = Episode("drift-v7-2026-02-03", "7", "2026-02-03", ["cam0", "cam2"], ["2026-02-02", "2026-02-03"],
                round_id="soak-drift-v7-2026-02-03", companions={"cam2": "why"},
                joined_late={"cam4": "drift-v7-2026-02-05"})
    line = episode_line(e)
    assert line.startswith("drift-v7-2026-02-03") and "cam0,cam2" in line and "2026-02-02..2026-02-03" in line
    assert "round soak-drift-v7-2026-02-03" in line and " joined: cam2" in line
    assert line.endswith("found later: cam4 (drift-v7-2026-02-05)")
    plain = episode_line(Episode("drift-v7-2026-02-05", "7", "2026-02-05", ["cam4"], ["2026-02-05"]))
    assert "joined" not in plain and "found later" not in plain and plain.endswith("round -")

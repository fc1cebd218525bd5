"""One retrain per round: a second run of the same round says who holds it and does nothing (fakes; the same with
two processes on the real stack: tests/integration/test_faults.py)."""

from __future__ import annotations

from typing import Any

import pytest


def test_a_second_retrain_of_a_round_does_nothing_and_says_why(config: str, fakes: Any) -> None:
    from detloop.errors import DataError
    from detloop.settings import load_settings
    from flows.loop import retrain_and_promote
    from flows.params import RetrainParams
    from tasks.rounds import retrain_lease

    s = load_settings(config)
    with retrain_lease(fakes.store, s, "r-1"):
        out = retrain_and_promote(RetrainParams(config=config, round_id="r-1"))
    assert set(out) == {"round_id", "skipped"}
    assert out["skipped"].startswith("another retrain of round r-1 is running (lease s3://")
    assert "held by host" in out["skipped"] and "expires in" in out["skipped"]
    assert not [k for (_, k) in fakes.store.objects if k.startswith("locks/")]  # released by both
    with pytest.raises(DataError, match="round 'r-1' not found"):  # free again: this run does the work
        retrain_and_promote(RetrainParams(config=config, round_id="r-1"))


def test_a_promotion_whose_log_line_was_lost_is_logged_once(config: str, fakes: Any, world_files: Any) -> None:
    """The alias moved, then S3 failed before the log line: the next run that finds the champion in place logs it."""
    from detloop.settings import load_settings
    from flows.loop import promote
    from flows.params import PromoteParams
    from tasks.registry import read_promotion_log
    from tasks.rounds import version_of_round

    s = load_settings(config)
    reg = fakes.registry
    v1 = reg.add_model(world_files, run_id="run-1")
    v2 = reg.add_model(world_files, run_id="run-2", tags={"gate.passed": "true", "detloop.round_id": "r-9",
                                                           "detloop.parent_version": v1}, alias="champion")
    assert version_of_round(reg, "r-9").version == v2 and version_of_round(reg, "r-8") is None
    assert read_promotion_log(fakes.store, s) == []
    out = promote(PromoteParams(config=config, version=v2, reason="gate passed on round r-9"))
    assert out["action"] == "noop"
    (entry,) = read_promotion_log(fakes.store, s)
    assert entry["version"] == v2 and entry["previous"] == v1 and "logged after the fact" in entry["reason"]
    promote(PromoteParams(config=config, version=v2, reason="again"))
    assert len(read_promotion_log(fakes.store, s)) == 1  # once


@pytest.fixture
def world_files(tmp_path: Any) -> Any:
    (tmp_path / "files" / "scoring").mkdir(parents=True)
    (tmp_path / "files" / "weights").mkdir()
    (tmp_path / "files" / "weights" / "best.pt").write_bytes(b"w")
    return tmp_path / "files"

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

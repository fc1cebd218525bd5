"""The demo/soak harness waits for a round's retrain and re-runs the watch while none exists, so a lost
``round.completed`` event costs a re-announcement, not a hang (flows.demo.wait_for_round_retrain)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from detloop.errors import DetloopError
from flows.demo import wait_for_round_retrain


@dataclass
class _State:
    name: str

    def is_final(self) -> bool:
        return self.name in {"Completed", "Failed", "Crashed", "Cancelled"}

    def is_completed(self) -> bool:
        return self.name == "Completed"

    @property
    def message(self) -> str:
        return f"{self.name.lower()} in the fake"


@dataclass
class _Run:
    round_id: str
    state: _State
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parameters = {"params": {"round_id": self.round_id}}


class _World:
    """A fake clock and server: the watch re-announces the round only on its ``announce_on``-th run."""

    def __init__(self, announce_on: int | None, finish_after: float = 30.0, end: str = "Completed") -> None:
        self.now = 0.0
        self.watches: list[float] = []
        self.runs: list[_Run] = [_Run("other-round", _State("Completed"))]
        self.announce_on, self.finish_after, self.end = announce_on, finish_after, end
        self.started: float | None = None

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s

    def list_runs(self) -> list[_Run]:
        if self.started is not None and self.now - self.started >= self.finish_after:
            for r in self.runs:
                if r.round_id == "r1":
                    r.state = _State(self.end)
        return list(self.runs)

    def rewatch(self) -> None:
        self.watches.append(self.now)
        if self.announce_on is not None and len(self.watches) == self.announce_on:
            self.runs.append(_Run("r1", _State("Running")))
            self.started = self.now


def _wait(w: _World, timeout: float = 3600.0, rewatch: bool = True) -> Any:
    return wait_for_round_retrain("r1", w.list_runs, timeout, rewatch=w.rewatch if rewatch else None,
                                  rewatch_every=60.0, poll=3.0, clock=w.clock, sleep=w.sleep)


def test_a_lost_event_is_healed_by_re_running_the_watch() -> None:
    w = _World(announce_on=5)  # the watch re-announces after 2 x lease_seconds, i.e. on its 5th run a minute apart
    run = _wait(w)
    assert run.round_id == "r1" and run.state.is_completed()
    assert len(w.watches) == 5
    assert all(b - a >= 60.0 for a, b in zip(w.watches, w.watches[1:], strict=False))
    assert w.now < 400.0


def test_no_watch_runs_once_the_retrain_exists() -> None:
    w = _World(announce_on=None)
    w.runs.append(_Run("r1", _State("Running")))
    w.started = 0.0
    _wait(w)
    assert w.watches == []


def test_without_rewatch_a_lost_event_times_out_with_one_line() -> None:
    w = _World(announce_on=1)
    with pytest.raises(DetloopError, match="no finished retrain-and-promote run for round r1 after 600 s"):
        _wait(w, timeout=600.0, rewatch=False)
    assert w.watches == []


def test_a_failed_retrain_is_reported_not_waited_on() -> None:
    w = _World(announce_on=1, end="Failed")
    with pytest.raises(DetloopError, match="retrain-and-promote for r1 ended Failed: failed in the fake"):
        _wait(w)
    assert len(w.watches) == 1

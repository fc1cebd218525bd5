"""The demo/soak harness waits for a round's retrain and re-runs the watch while none is pending or running, so a
lost ``round.completed`` event, or a retrain failed in an outage, costs a re-announcement, not a hang or a give-up
(flows.demo.wait_for_round_retrain)."""
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
    """A fake clock and server: the watch announces a retrain of r1 on its ``announce_on``-th run since the last
    retrain of r1 ended (or since the start); the k-th retrain ends ``ends[k]`` (the last entry repeats)."""

    def __init__(self, announce_on: int | None, finish_after: float = 30.0,
                 ends: tuple[str, ...] = ("Completed",)) -> None:
        self.now = 0.0
        self.watches: list[float] = []
        self.runs: list[_Run] = [_Run("other-round", _State("Completed"))]
        self.announce_on, self.finish_after, self.ends = announce_on, finish_after, ends
        self.active: _Run | None = None
        self.started = 0.0
        self.since_end = 0  # watches since the last retrain of r1 ended

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s

    def start_run(self) -> _Run:
        k = sum(r.round_id == "r1" for r in self.runs)
        run = _Run("r1", _State("Running"))
        run.parameters["end"] = self.ends[min(k, len(self.ends) - 1)]
        self.runs.append(run)
        self.active, self.started = run, self.now
        return run

    def list_runs(self) -> list[_Run]:
        if self.active is not None and self.now - self.started >= self.finish_after:
            self.active.state = _State(self.active.parameters["end"])
            self.active, self.since_end = None, 0
        return list(self.runs)

    def rewatch(self) -> None:
        self.watches.append(self.now)
        self.since_end += 1
        if self.announce_on is not None and self.active is None and self.since_end == self.announce_on:
            self.start_run()


def _wait(w: _World, timeout: float = 3600.0, rewatch: bool = True) -> Any:
    return wait_for_round_retrain("r1", w.list_runs, timeout, rewatch=w.rewatch if rewatch else None,
                                  rewatch_every=60.0, max_failed=3, poll=3.0, clock=w.clock, sleep=w.sleep)


def test_a_lost_event_is_healed_by_re_running_the_watch() -> None:
    w = _World(announce_on=5)  # the watch re-announces after 2 x lease_seconds, i.e. on its 5th run a minute apart
    run = _wait(w)
    assert run.round_id == "r1" and run.state.is_completed()
    assert len(w.watches) == 5
    assert all(b - a >= 60.0 for a, b in zip(w.watches, w.watches[1:], strict=False))
    assert w.now < 400.0


def test_no_watch_runs_once_the_retrain_exists() -> None:
    w = _World(announce_on=None)
    w.start_run()
    _wait(w)
    assert w.watches == []


def test_without_rewatch_a_lost_event_times_out_with_one_line() -> None:
    w = _World(announce_on=1)
    with pytest.raises(DetloopError, match="no finished retrain-and-promote run for round r1 after 600 s"):
        _wait(w, timeout=600.0, rewatch=False)
    assert w.watches == []


def test_a_retrain_failed_in_an_outage_is_re_announced_and_its_second_run_completes() -> None:
    # the soak's week 4 (session 31): Prefect killed under the retrain, which ended Failed; the watch re-announces
    # the untrained round after 2 x lease_seconds and the new run completes
    w = _World(announce_on=4, ends=("Failed", "Completed"))
    w.start_run()
    run = _wait(w)
    assert run.state.is_completed() and run is w.runs[-1]
    assert [r.state.name for r in w.runs if r.round_id == "r1"] == ["Failed", "Completed"]
    assert len(w.watches) == 4  # none while the first run was running, 4 after it failed


def test_a_retrain_that_keeps_failing_is_reported_after_max_failed_runs() -> None:
    w = _World(announce_on=1, ends=("Failed",))
    with pytest.raises(DetloopError, match=r"retrain-and-promote for r1 ended Failed: failed in the fake \(3 runs\)"):
        _wait(w)
    assert len(w.watches) == 3


def test_without_rewatch_a_failed_retrain_is_reported_at_once() -> None:
    w = _World(announce_on=None, ends=("Failed",))
    w.start_run()
    with pytest.raises(DetloopError, match=r"ended Failed: failed in the fake$"):
        _wait(w, rewatch=False)
    assert w.now < 60.0 and w.watches == []

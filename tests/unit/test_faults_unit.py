"""infra.faults.kill_on_call: the kill fires once, at the chosen call, before or after it, across shared proxies."""

from __future__ import annotations

from typing import Any

import pytest

from infra.faults import Injection, kill_on_call, kill_service
from infra.procs import StackError


class Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.name = "target"

    def set_alias(self, alias: str, version: str) -> str:
        self.calls.append(("set_alias", (alias, version)))
        return version


def test_fires_once_on_the_matching_call_before_or_after_it() -> None:
    events: list[str] = []
    t = Target()
    p = kill_on_call(t, "set_alias", lambda: events.append(f"kill after {len(t.calls)} calls"),
                     when=lambda alias, *a: alias == "champion")
    assert p.name == "target"  # everything else is the target's
    p.set_alias("challenger", "2")
    p.set_alias("champion", "2")
    p.set_alias("champion", "3")
    assert events == ["kill after 1 calls"] and p.injection.calls == 2 and p.injection.killed_at
    after = Target()
    q = kill_on_call(after, "set_alias", lambda: events.append(f"after: {len(after.calls)} calls done"), after=True)
    q.set_alias("champion", "1")
    assert events[-1] == "after: 1 calls done"


def test_proxies_sharing_an_injection_fire_once() -> None:
    fired: list[int] = []
    inj = Injection("mlflow", "promotion")
    a = kill_on_call(Target(), "set_alias", lambda: fired.append(1), injection=inj)
    b = kill_on_call(Target(), "set_alias", lambda: fired.append(2), injection=inj)
    a.set_alias("x", "1")
    b.set_alias("x", "1")
    assert fired == [1] and inj.calls == 2


def test_kill_service_refuses_what_is_not_running(tmp_path: Any) -> None:
    from detloop.settings import REPO_ROOT, load_settings

    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={}, overrides={"data_dir": str(tmp_path)})
    with pytest.raises(StackError, match="s3 is not running"):
        kill_service(s, "s3")
    with pytest.raises(StackError, match="unknown service"):
        kill_service(s, "nginx")


def test_a_scoring_cell_forgets_stored_predictions_so_its_kill_at_the_first_frame_read_fires() -> None:
    """Every cell of ``detloop bench faults`` starts from the same random weights: without forgetting the stored
    predictions, a later cell's selection reuses an earlier cell's, reads no frame, and its kill never fires."""
    from benchmarks.faults import forget_scores
    from tests.fakes import FakeStore

    store = FakeStore()
    store.put_bytes("data", "predictions/window=2026-03-02_2026-03-09/model=abc/sample=1/meta.json", b"{}")
    store.put_bytes("data", "predictions/window=2026-03-02_2026-03-09/model=abc/sample=1/predictions.jsonl", b"")
    store.put_bytes("data", "runs/r1/selection_meta.json", b"{}")
    store.put_bytes("prod", "predictions/not-the-data-bucket.jpg", b"x")
    assert forget_scores(store, "data") == 2
    assert [k for (b, k) in store.objects] == ["runs/r1/selection_meta.json", "predictions/not-the-data-bucket.jpg"]

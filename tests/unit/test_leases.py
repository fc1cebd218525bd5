"""Leases in the object store (tasks/leases.py) over the fake store: who holds, expiry by the store's clock, takeover,
renewal, loss. The same semantics against the real SeaweedFS: tests/integration/test_locks.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from detloop.errors import LockBusy
from tasks.leases import lease, lease_key, try_acquire
from tests.fakes import FakeStore

B = "data"


def test_one_holder_the_next_says_who_and_until_when() -> None:
    store = FakeStore()
    with lease(store, B, "training-m", "training of m", ttl_s=60) as held:
        assert (B, lease_key("training-m")) in store.objects and held.took_over is None
        with pytest.raises(LockBusy) as err, lease(store, B, "training-m", "training of m", ttl_s=60):
            pass
        msg = str(err.value)
        assert msg.startswith("another training of m is running (lease s3://data/locks/training-m.json is held by host")
        assert " pid " in msg and " since " in msg and "expires in" in msg and "\n" not in msg
    assert (B, lease_key("training-m")) not in store.objects  # released
    with lease(store, B, "training-m", "training of m", ttl_s=60):
        pass


def test_a_holder_that_stopped_renewing_is_taken_over_by_the_store_clock() -> None:
    store = FakeStore()
    now = [1000.0]
    store.clock = lambda: now[0]
    first, _ = try_acquire(store, B, lease_key("x"), "x", ttl_s=30)
    assert first is not None
    now[0] += 29  # within the TTL: still held
    second, holder = try_acquire(store, B, lease_key("x"), "x", ttl_s=30)
    assert second is None and "expires in 1 s" in holder
    now[0] += 2  # 31 s without renewal: stale
    second, _ = try_acquire(store, B, lease_key("x"), "x", ttl_s=30)
    assert second is not None and second.took_over and "not renewed for 31 s" in second.took_over
    # the old holder finds out when it renews: it no longer holds the lease, and says so before a side effect
    assert first.renew() is False and first.lost
    with pytest.raises(LockBusy, match="was lost"):
        first.check()
    first.release()  # does not delete the new holder's lease
    assert store.get_json(B, lease_key("x"))["owner"] == second.info["owner"]


def test_renewal_keeps_a_live_holder_and_waiters_get_it_after_release() -> None:
    store = FakeStore()
    with lease(store, B, "p", "promotion", ttl_s=0.8) as held:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:  # 2.5 TTLs: renewed in the background, never stale
            assert try_acquire(store, B, lease_key("p"), "promotion", ttl_s=0.8)[0] is None
            time.sleep(0.1)
        held.check()
    with lease(store, B, "p", "promotion", ttl_s=0.8, wait_s=1.0):
        pass


def test_a_store_outage_longer_than_the_ttl_loses_the_lease() -> None:
    store = FakeStore()
    with pytest.raises(LockBusy, match="was lost"), lease(store, B, "t", "training", ttl_s=0.6) as held:
        store.down = True
        time.sleep(1.0)
        store.down = False
        held.check()


def test_waiting_for_a_busy_lease_times_out_with_the_holder(monkeypatch: Any) -> None:
    store = FakeStore()
    with lease(store, B, "t", "training of m", ttl_s=60):
        t0 = time.monotonic()
        with pytest.raises(LockBusy, match="held by host"), lease(store, B, "t", "training of m", ttl_s=60,
                                                                  wait_s=0.3, poll_s=0.1):
            pass
        assert 0.25 < time.monotonic() - t0 < 2.0


def test_an_unreadable_lease_object_holds_nothing() -> None:
    store = FakeStore()
    store.put_bytes(B, lease_key("t"), b"not json")
    now = [store.clock() + 1]
    store.clock = lambda: now[0]
    held, _ = try_acquire(store, B, lease_key("t"), "t", ttl_s=60)
    assert held is not None and held.took_over

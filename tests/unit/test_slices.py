"""The gate's control slice: which rounds' control frames it pools."""

from __future__ import annotations

from types import SimpleNamespace

from tasks.slices import control_sources


def _e(source: str, date: str) -> SimpleNamespace:
    return SimpleNamespace(source=source, date=date)


ENTRIES = [_e("round:p-2026-03-09", "2026-03-08"), _e("round:p-2026-03-02", "2026-03-01"),
           _e("round:p-2026-03-16", "2026-03-15"), _e("round:p-2026-03-02", "2026-02-27"),
           _e("round:p-2026-03-23", "2026-03-22"), _e("seed", "2026-01-01")]


def test_one_round_is_the_current_round_only() -> None:
    assert control_sources(ENTRIES, "round:p-2026-03-16", 1) == ["round:p-2026-03-16"]


def test_pooled_rounds_are_the_current_and_the_ones_before_it_never_later() -> None:
    assert control_sources(ENTRIES, "round:p-2026-03-16", 3) == [
        "round:p-2026-03-02", "round:p-2026-03-09", "round:p-2026-03-16"]
    # a backfill of an older week does not see the later weeks' control frames
    assert control_sources(ENTRIES, "round:p-2026-03-09", 4) == ["round:p-2026-03-02", "round:p-2026-03-09"]
    assert control_sources(ENTRIES, "round:p-2026-03-23", 2) == ["round:p-2026-03-16", "round:p-2026-03-23"]


def test_ordered_by_capture_date_not_by_id_spelling() -> None:
    entries = [_e("round:zz-old", "2026-01-05"), _e("round:aa-new", "2026-02-05")]
    assert control_sources(entries, "round:aa-new", 2) == ["round:zz-old", "round:aa-new"]
    assert control_sources(entries, "round:zz-old", 2) == ["round:zz-old"]


def test_current_round_without_control_frames_still_pools_the_earlier_ones() -> None:
    assert control_sources(ENTRIES, "round:p-2026-03-30", 2) == ["round:p-2026-03-23", "round:p-2026-03-30"]

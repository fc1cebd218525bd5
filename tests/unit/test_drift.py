"""Drift rules: features, camera-day comparison, verdicts, the episode machine, seeded streams over 30 days,
the reference's days and anchor, targeted rounds, settings, live accuracy."""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import pytest

from detloop.contracts import FrameRef, RoundRecord, ScoredFrame
from detloop.detections import Detections
from detloop.settings import DriftSettings
from tasks.drift import (
    CameraDayStats,
    CameraTrack,
    Companion,
    Episode,
    Features,
    MonitorState,
    Stat,
    Verdict,
    advance,
    area_ratio,
    companion_candidates,
    companion_level,
    companion_window,
    companion_window_days,
    companions,
    compare,
    compare_day,
    join_companions,
    join_late,
    permutation_floor_note,
    pool_window,
    pooled,
    promotion_anchor,
    reference_days,
    replay,
    shifted_classes,
    shrink_advice,
    supersede,
    verdict,
)

CLASSES = ["disc", "square", "triangle", "ring", "star"]
START = date(2026, 3, 1)


# ---- synthetic features ----------------------------------------------------------------------------------
def synth(rng: np.random.Generator, camera: str, day: str, n: int, brightness: float = 0.5,
          contrast: float = 0.2, conf_shift: float = 0.0, area_scale: float = 1.0) -> Features:
    """``n`` frames: brightness/contrast per frame, 0-7 boxes whose confidences share a frame effect, classes
    from a fixed mix, log areas, an embedding that follows brightness and contrast."""
    bri = rng.normal(brightness, 0.04, n)
    con = rng.normal(contrast, 0.02, n)
    k = rng.integers(0, 8, n)
    frame = np.repeat(np.arange(n), k)
    effect = rng.normal(0.0, 0.08, n)
    conf = np.clip(0.6 + conf_shift + effect[frame] + rng.normal(0, 0.1, frame.size), 0.25, 1.0)
    cls = rng.choice(5, frame.size, p=[0.3, 0.27, 0.22, 0.18, 0.03])
    area = np.log(area_scale**2 * np.exp(rng.normal(7.0, 0.8, frame.size)))
    emb = np.column_stack([bri * 10, con * 10, rng.normal(size=(n, 6))]).astype(np.float32)
    return Features(np.full(n, camera), np.full(n, day), bri, con, k, emb, frame, conf, cls, area)


def cfg(**kw: Any) -> DriftSettings:
    base = {"min_frames": 20, "min_boxes": 20}  # permutations: the default 999 (p floor 0.001)
    return DriftSettings(**{**base, **kw})


# ---- features ----------------------------------------------------------------------------------------------
def test_features_from_scored_frames_keep_boxes_above_the_threshold_and_round_trip() -> None:
    frames = []
    for i, (cam, confs) in enumerate([("cam0", [0.9, 0.1]), ("cam1", []), ("cam0", [0.3])]):
        det = Detections(np.array([[0, 0, 10, 20]] * len(confs), np.float32), np.array(confs, np.float32),
                         np.zeros(len(confs), np.int64))
        frames.append(ScoredFrame(FrameRef("b", f"k{i}", "e", cam, "2026-01-05"), 640, 480, det,
                                  np.full(4, i, np.float32), 0.4 + i / 10, 0.1))
    f = Features.from_scored(frames, min_confidence=0.25)
    assert f.n_frames == 3 and f.detections.tolist() == [1, 0, 1] and f.box_frame.tolist() == [0, 2]
    assert f.box_log_area == pytest.approx([np.log(200.0)] * 2)
    cam0 = f.of_camera("cam0")
    assert cam0.n_frames == 2 and cam0.box_frame.tolist() == [0, 1] and cam0.embedding[:, 0].tolist() == [0, 2]
    back = Features.from_npz(f.to_npz())
    assert back.brightness.tolist() == pytest.approx(f.brightness.tolist()) and back.embedding.dtype == np.float32
    both = Features.concat([cam0, f.of_camera("cam1")])
    assert both.n_frames == 3 and both.box_frame.tolist() == [0, 1]
    assert Features.from_scored([], 0.25).n_frames == 0


# ---- one camera-day ------------------------------------------------------------------------------------------
def test_too_few_frames_is_not_enough_data_never_drift_or_no_drift() -> None:
    rng = np.random.default_rng(0)
    ref = synth(rng, "cam1", "ref", 200)
    s = compare(ref, synth(rng, "cam1", "2026-03-01", 10, brightness=0.1), cfg(), CLASSES, "cam1", "2026-03-01")
    v = verdict(s, cfg(), CLASSES)
    assert not s.sufficient and s.tests == [] and v.status == "insufficient" and "not enough data" in v.note
    empty = compare(ref, Features.empty(), cfg(), CLASSES, "cam1", "2026-03-01")
    assert verdict(empty, cfg()).status == "insufficient"


def test_a_darker_day_is_drift_with_the_frame_signals_and_a_same_day_is_clean() -> None:
    rng = np.random.default_rng(1)
    ref = synth(rng, "cam1", "ref", 280)
    same = compare(ref, synth(rng, "cam1", "d1", 40), cfg(), CLASSES, "cam1", "d1")
    dark = compare(ref, synth(rng, "cam1", "d2", 40, brightness=0.25, contrast=0.1), cfg(), CLASSES, "cam1", "d2")
    assert verdict(same, cfg(), CLASSES).status == "clean"
    v = verdict(dark, cfg(), CLASSES)
    assert v.status == "drift" and {"brightness:ks", "contrast:ks", "embedding:mmd"} <= set(v.signals)
    assert dark.test("brightness", "psi").band == "significant"
    assert dark.summary["brightness"][1] == pytest.approx(0.25, abs=0.03)
    # stored and read back, the verdict is the same (replayable)
    assert verdict(CameraDayStats.from_dict(dark.to_dict()), cfg(), CLASSES).signals == v.signals


def test_smaller_boxes_and_a_class_mix_change_are_box_level_signals() -> None:
    rng = np.random.default_rng(2)
    ref = synth(rng, "cam2", "ref", 280)
    cur = synth(rng, "cam2", "d", 60, area_scale=0.45)
    cur.box_class = np.where(rng.random(cur.n_boxes) < 0.4, 4, cur.box_class)  # many more stars
    s = compare(ref, cur, cfg(), CLASSES, "cam2", "d")
    v = verdict(s, cfg(), CLASSES)
    assert {"log_area:ks", "class_mix:chi2"} <= set(v.signals) and "star" in v.classes
    assert s.test("confidence[star]", "ks") is not None  # enough stars now for their own test


def test_a_zoomed_out_camera_is_told_its_objects_shrank_and_other_drifts_are_not() -> None:
    """The shrink note: log_area among the signals and the boxes at most drift.shrink_advice_ratio of their
    reference area; not for a dusk, not for a small shrink, not when switched off, not on old statistics."""
    one = functools.partial(cfg, alarm_min_signals=1, alpha=0.05)  # a lone signal is drift: the note is tested
    rng = np.random.default_rng(4)
    ref = synth(rng, "cam2", "ref", 280)
    zoomed = compare(ref, synth(rng, "cam2", "d", 60, area_scale=0.45), one(), CLASSES, "cam2", "d")
    v = verdict(zoomed, one(), CLASSES)
    assert v.status == "drift" and "log_area:ks" in v.signals
    assert area_ratio(zoomed) == pytest.approx(0.45**2, rel=0.25)
    note = shrink_advice(zoomed, v, one())
    assert note is not None and note.startswith("cam2: its detected boxes are 0.") and "model.tiling.cameras.cam2" in note
    assert "`detloop drift tiling cam2`" in note  # how to measure it first
    assert "`detloop drift tiling cam2 --since 2026-02-10`" in (shrink_advice(zoomed, v, one(), since="2026-02-10")
                                                               or "")
    tiled = shrink_advice(zoomed, v, one(), tile=320)  # already tiled: said so, not advised again
    assert tiled is not None and "already tiled (320-px tiles" in tiled and "{enabled: true" not in tiled
    assert "--variant t320f --variant t160f" in tiled
    assert shrink_advice(zoomed, v, one(shrink_advice_ratio=0.0)) is None  # switched off
    assert shrink_advice(zoomed, v, one(shrink_advice_ratio=0.1)) is None  # not shrunk that much
    dusk = compare(ref, synth(rng, "cam2", "d2", 60, brightness=0.3), one(), CLASSES, "cam2", "d2")
    vd = verdict(dusk, one(), CLASSES)
    assert vd.status == "drift" and "log_area:ks" not in vd.signals and shrink_advice(dusk, vd, one()) is None
    slight = compare(ref, synth(rng, "cam2", "d3", 200, area_scale=0.85), one(), CLASSES, "cam2", "d3")
    vs = verdict(slight, one(), CLASSES)
    assert "log_area:ks" in vs.signals and shrink_advice(slight, vs, one()) is None  # 0.72x: above 0.5
    old = CameraDayStats.from_dict({**zoomed.to_dict(), "summary": {}})  # stored before the summary had log_area
    assert area_ratio(old) is None and shrink_advice(old, v, one()) is None


def test_a_new_camera_is_compared_with_every_cameras_reference() -> None:
    rng = np.random.default_rng(3)
    ref = Features.concat([synth(rng, "cam0", "r", 100), synth(rng, "cam1", "r", 100)])
    day = Features.concat([synth(rng, "cam0", "d", 30), synth(rng, "cam4", "d", 30, brightness=0.2)])
    out = compare_day(ref, day, cfg(), CLASSES, "d", cameras=["cam0", "cam1"])
    assert sorted(out) == ["cam0", "cam1", "cam4"]
    assert out["cam0"].reference == "camera" and out["cam4"].reference == "all cameras"
    assert out["cam4"].n_ref_frames == 200 and not out["cam1"].sufficient  # no frames of cam1 that day


def test_the_rule_counts_only_its_statistics_and_corrects_them_together() -> None:
    s = CameraDayStats("c", "d", 40, 200, 100, 500, "camera", True, tests=[
        Stat("brightness", "ks", 0.5, 0.004), Stat("contrast", "ks", 0.4, 0.02),
        Stat("brightness", "psi", 0.5, None, 0.1, "significant"),
        Stat("brightness", "wasserstein", 0.2, None, 1.5), Stat("embedding", "mmd", 0.01, 0.3)])
    assert verdict(s, cfg(alpha=0.05, correction="bonferroni")).signals == ["brightness:ks"]  # 0.02*3 > 0.05
    assert verdict(s, cfg(alpha=0.05, correction="fdr")).signals == ["brightness:ks", "contrast:ks"]
    assert verdict(s, cfg(alpha=0.05, correction="fdr")).status == "drift"
    psi_only = cfg(alarm_statistics=["psi", "wasserstein"], alarm_min_signals=2)
    assert verdict(s, psi_only).signals == ["brightness:psi", "brightness:wasserstein"]
    assert verdict(s, cfg(alarm_min_signals=3, alpha=0.05)).status == "clean"


def test_one_signal_far_below_alpha_is_drift_when_the_strong_rule_is_on() -> None:
    """A class-mix-only drift moves one test: the two-signal rule never sees it, ``alarm_strong_alpha`` does."""
    def day(p: float) -> CameraDayStats:
        tests = [Stat("class_mix", "chi2", 30.0, p)] + [Stat(f"f{i}", "ks", 0.1, 0.5) for i in range(12)]
        return CameraDayStats("c", "d", 40, 200, 100, 500, "camera", True, tests=tests)

    strong = cfg(alarm_strong_alpha=0.002)
    assert cfg().alarm_strong_alpha == 0.002                        # the default
    assert verdict(day(1e-4), cfg(alarm_strong_alpha=None)).status == "clean"  # 1 signal (adjusted 0.0013) of 2
    v = verdict(day(1e-4), strong)
    assert v.status == "drift" and v.signals == ["class_mix:chi2"]   # 0.0013 < 0.002
    assert verdict(day(4e-4), strong).status == "clean"             # adjusted 0.0052: a signal, not a strong one
    assert verdict(day(0.5), strong).status == "clean"


def test_pooling_days_sees_a_small_lasting_class_mix_shift_a_single_day_does_not() -> None:
    rng = np.random.default_rng(5)
    ref = synth(rng, "cam0", "ref", 280)
    by_day = {}
    for k in range(6):
        d = (START + timedelta(days=k)).isoformat()
        f = synth(rng, "cam0", d, 24)
        f.box_class = np.where(rng.random(f.n_boxes) < 0.12, 4, f.box_class)  # stars: 3 % -> ~15 % of boxes
        by_day[d] = f
    days_ = sorted(by_day)
    assert pool_window(days_[2], 3) == days_[:3] and pooled(by_day, days_[0], 3).n_frames == 24  # none before
    assert pooled(by_day, days_[4], 3).n_frames == 72 and pooled(by_day, days_[4], 1) is by_day[days_[4]]
    rule = cfg(alarm_strong_alpha=0.002, permutations_refine=9999)

    def p_mix(pool: int, d: str) -> float:
        return compare(ref, pooled(by_day, d, pool), rule, CLASSES, "cam0", d).test("class_mix", "chi2").p

    single = [p_mix(1, d) for d in days_[2:]]
    pooled3 = [p_mix(3, d) for d in days_[2:]]
    assert all(b <= a for a, b in zip(single, pooled3, strict=True)) and sum(pooled3) < sum(single) / 10  # 3x the frames
    assert sum(verdict(compare(ref, pooled(by_day, d, 3), rule, CLASSES, "cam0", d), rule).status == "drift"
               for d in days_[2:]) > sum(verdict(compare(ref, by_day[d], rule, CLASSES, "cam0", d), rule).status
                                         == "drift" for d in days_[2:])


def floor_day(n_tests: int, n_floor: int, permutations: int) -> CameraDayStats:
    """A camera-day where ``n_floor`` permutation tests sit at their floor and the rest are unremarkable."""
    floor = 1.0 / (permutations + 1)
    tests = [Stat(f"f{i}", "mmd", 1.0, floor if i < n_floor else 0.5) for i in range(n_tests)]
    return CameraDayStats("c", "d", 40, 200, 100, 500, "camera", True, tests=tests)


@pytest.mark.parametrize("correction", ["fdr", "bonferroni"])
def test_the_permutation_floor_note_agrees_with_the_rule(correction: str) -> None:
    """Too few permutations: even the rule's 2 tests at the smallest p-value cannot drift a day, and the note says
    how many make them count; with that many they do."""
    few = cfg(permutations=199, permutations_refine=None, alpha=0.01, correction=correction, alarm_min_signals=2)
    note = permutation_floor_note(few, 13)
    assert note is not None and "drift.permutations = 199" in note
    assert verdict(floor_day(13, 2, 199), few).status == "clean"  # deaf, as the note says
    need = int(note.rsplit(">= ", 1)[1])
    assert need == (650 if correction == "fdr" else 1300)
    enough = cfg(permutations=need, permutations_refine=None, alpha=0.01, correction=correction,
                 alarm_min_signals=2)
    assert permutation_floor_note(enough, 13) is None
    assert verdict(floor_day(13, 2, need), enough).status == "drift"
    assert permutation_floor_note(cfg(permutations=need - 1, permutations_refine=None, alpha=0.01,
                                      correction=correction), 13) is not None
    # refined p-values reach 1 / (permutations_refine + 1): the default 9,999 hears with any base
    assert permutation_floor_note(cfg(permutations=199, alpha=0.01, correction=correction), 13) is None
    if correction == "fdr":  # 7 tests at 0.005 pass BH over 13 (0.005 * 13 / 7 < 0.01), 6 do not
        assert "only when 7 of the 13 tests" in note
        assert verdict(floor_day(13, 7, 199), few).status == "drift"
        assert verdict(floor_day(13, 6, 199), few).status == "clean"
    assert permutation_floor_note(few, 0) is None


# ---- the episode machine ------------------------------------------------------------------------------------------
def vd(day: str, **status: str) -> dict[str, Verdict]:
    return {c: Verdict(c, day, st, ["brightness:ks"] if st == "drift" else []) for c, st in status.items()}


def days(n: int, start: date = START) -> list[str]:
    return [(start + timedelta(days=i)).isoformat() for i in range(n)]


def test_consecutive_drifted_days_open_one_episode_and_clean_days_close_it() -> None:
    rule = cfg(alarm_consecutive_days=2, close_after_clean_days=2)
    d = days(9)
    seq = {d[0]: vd(d[0], cam1="drift", cam2="clean"), d[1]: vd(d[1], cam1="insufficient", cam2="drift"),
           d[2]: vd(d[2], cam1="drift", cam2="drift"), d[3]: vd(d[3], cam1="drift", cam2="clean"),
           d[4]: vd(d[4], cam1="clean", cam2="drift"), d[5]: vd(d[5], cam1="clean", cam2="clean"),
           d[6]: vd(d[6], cam1="clean", cam2="clean"), d[7]: vd(d[7], cam1="clean", cam2="clean")}
    state, eps = replay(seq, rule, "3")
    # cam1 drifted on d0 and d2 (d1 had no data: skipped), cam2 on d1 and d2: both reach 2 in a row on d2
    (e,) = eps.values()
    assert e.episode_id == f"drift-v3-{d[2]}" and e.cameras == ["cam1", "cam2"]
    assert e.days == d[:5]  # the streaks, then its cameras' drifted days
    # cam1 clean on d4, d5 -> leaves on d5; cam2 drifted again on d4, clean d5, d6 -> leaves; closed on d6
    assert e.status == "closed" and e.closed_on == d[6] and e.recovered == ["cam1", "cam2"]
    assert state.last_day == d[7] and all(t.episode is None for t in state.cameras.values())


def test_one_drifted_day_is_not_an_episode_and_a_silenced_camera_opens_none() -> None:
    rule = cfg(alarm_consecutive_days=2)
    d = days(4)
    _, eps = replay({d[0]: vd(d[0], cam1="drift"), d[1]: vd(d[1], cam1="clean")}, rule, "1")
    assert eps == {}
    silenced = Episode("drift-v1-old", "1", "2026-02-01", ["cam1"], ["2026-02-01"], status="closed",
                       silenced_until=d[3])
    _, eps = replay({x: vd(x, cam1="drift") for x in d}, rule, "1", episodes={silenced.episode_id: silenced})
    assert sorted(eps) == [f"drift-v1-{d[3]}", "drift-v1-old"]  # not before the silence ends
    assert eps[f"drift-v1-{d[3]}"].days == d


def test_advancing_again_after_a_crash_keeps_what_the_episode_recorded() -> None:
    """The episode was stored (and announced) but not the state: re-running the day finds it, does not reset it."""
    rule = cfg(alarm_consecutive_days=1)
    d = days(1)
    state = MonitorState("2", None, {"cam1": CameraTrack()})
    _, changed, opened = advance(state, d[0], vd(d[0], cam1="drift"), rule, {})
    stored = changed[opened[0]]
    stored.event_id, stored.round_id = "ev-1", "r-1"
    _, again, opened2 = advance(state, d[0], vd(d[0], cam1="drift"), rule, {stored.episode_id: stored})
    assert opened2 == opened and again[opened[0]].event_id == "ev-1" and again[opened[0]].round_id == "r-1"
    assert state.last_day is None  # advance does not modify its input


def _answer(eps: dict[str, Episode], eid: str) -> dict[str, Episode]:
    """What the monitor does after a day that opened ``eid``: announce it (a targeted round is set)."""
    return {**eps, eid: replace(eps[eid], round_id=f"round-{eid}", event_id=f"ev-{eid}")}


def test_an_answered_episode_still_drifting_after_reopen_days_hands_its_camera_to_a_new_episode() -> None:
    rule = cfg(alarm_consecutive_days=2, close_after_clean_days=2, reopen_after_days=5)
    d = days(12)
    state, eps = replay({x: vd(x, cam1="drift", cam2="drift") for x in d[:2]}, rule, "1")
    first = f"drift-v1-{d[1]}"
    eps = _answer(eps, first)
    # cam2 turns clean on d2..d3 and leaves; cam1 keeps drifting: 5 days after d1 (d6) its episode is stale
    seq = {x: vd(x, cam1="drift", cam2="clean") for x in d[2:12]}
    state, eps = replay(seq, rule, "1", start=state, episodes=eps)
    second = f"drift-v1-{d[6]}"
    assert sorted(eps) == [first, second]
    old, new = eps[first], eps[second]
    assert old.status == "closed" and old.closed_on == d[6] and old.followed_by == second
    assert old.recovered == ["cam2"] and old.handed_over == ["cam1"] and "followed by" in (old.close_reason or "")
    assert new.status == "open" and new.cameras == ["cam1"] and new.days[-1] == d[11]
    assert state.cameras["cam1"].episode == second
    # the new episode is not answered: however long cam1 drifts, it opens no third one
    assert replay({x: vd(x, cam1="drift") for x in days(10, START + timedelta(days=12))}, rule, "1",
                  start=state, episodes=eps)[1].keys() == eps.keys()


def test_a_replay_that_answers_its_episodes_reopens_like_the_live_monitor() -> None:
    d = days(12)
    rule = cfg(alarm_consecutive_days=2, reopen_after_days=5)
    drifting = {x: vd(x, cam1="drift") for x in d}
    assert len(replay(drifting, rule, "1")[1]) == 1  # never answered: one episode all along
    _, eps = replay(drifting, rule, "1", answer=True)
    assert sorted(eps) == [f"drift-v1-{d[1]}", f"drift-v1-{d[6]}", f"drift-v1-{d[11]}"]
    assert eps[f"drift-v1-{d[1]}"].followed_by == f"drift-v1-{d[6]}"


def test_an_unanswered_silenced_or_never_reopening_episode_stays_open() -> None:
    d = days(20)
    drifting = {x: vd(x, cam1="drift") for x in d}
    never = cfg(alarm_consecutive_days=2, reopen_after_days=0)
    state, eps = replay(drifting, never, "1")
    (e,) = eps.values()
    assert e.status == "open" and e.days == d  # not answered: stays open
    state, eps = replay({x: vd(x, cam1="drift") for x in days(2)}, never, "1")
    eps = _answer(eps, f"drift-v1-{d[1]}")
    _, after = replay({x: vd(x, cam1="drift") for x in d[2:]}, never, "1", start=state, episodes=eps)
    assert len(after) == 1 and after[f"drift-v1-{d[1]}"].status == "open"  # reopen_after_days=0: never
    silenced = {k: replace(v, silenced_until=(START + timedelta(days=20)).isoformat()) for k, v in eps.items()}
    _, after = replay({x: vd(x, cam1="drift") for x in d[2:]}, cfg(alarm_consecutive_days=2, reopen_after_days=3),
                      "1", start=state, episodes=silenced)
    assert len(after) == 1  # silenced through the last day: not handed over


def test_a_new_champion_supersedes_open_episodes_of_the_old_reference() -> None:
    old = Episode("drift-v1-x", "1", "2026-01-20", ["cam1"], ["2026-01-20"])
    mine = Episode("drift-v2-y", "2", "2026-01-25", ["cam3"], ["2026-01-25"])
    (closed,) = supersede([old, mine], "2", "2026-01-30")
    assert closed.episode_id == "drift-v1-x" and closed.status == "closed" and "v2" in closed.close_reason
    assert old.status == "open"


_REF = synth(np.random.default_rng(7), "cam1", "ref", 7 * 30)


@functools.cache
def _day(i: int, dark: bool) -> Verdict:
    """Day ``i`` of one camera (30 frames), the same draw in every stream; darker and flatter when ``dark``."""
    day = days(30)[i]
    cur = synth(np.random.default_rng([7, i]), "cam1", day, 30, brightness=0.35 if dark else 0.5,
                contrast=0.15 if dark else 0.2)
    return verdict(compare(_REF, cur, cfg(), CLASSES, "cam1", day), cfg(), CLASSES)


def stream(shift: range) -> dict[str, dict[str, Verdict]]:
    """30 days of one camera with the default rule: stationary, or darker on the days in ``shift``."""
    return {d: {"cam1": _day(i, i in shift)} for i, d in enumerate(days(30))}


def test_a_seeded_stationary_stream_raises_no_alarm_over_30_days() -> None:
    verdicts = stream(range(0))
    _, eps = replay(verdicts, cfg(), "1")
    assert eps == {}
    assert sum(day["cam1"].status == "drift" for day in verdicts.values()) <= 1  # never two in a row


def test_a_shifted_stream_opens_an_episode_and_closes_it_after_k_clean_days() -> None:
    _, eps = replay(stream(range(12, 20)), cfg(), "1")
    d = days(30)
    (e,) = eps.values()
    assert e.cameras == ["cam1"] and e.opened_on == d[13]  # the second drifted day in a row
    assert e.status == "closed" and e.closed_on == d[22]  # three clean days after the shift ended
    assert set(e.days) == set(d[12:20])


# ---- the reference ---------------------------------------------------------------------------------------------
def test_reference_days_are_the_last_production_days_before_the_anchor() -> None:
    have = [date(2026, 1, d) for d in (5, 6, 8, 9, 10, 12, 13)]
    assert reference_days(have, date(2026, 1, 12), 3) == [date(2026, 1, 8), date(2026, 1, 9), date(2026, 1, 10)]
    assert reference_days(have, date(2026, 1, 6), 7) == [date(2026, 1, 5)]
    assert reference_days(have, date(2026, 1, 5), 7) == []


def test_the_anchor_is_the_round_as_of_or_the_first_promotion_not_a_rollback() -> None:
    log = [{"action": "promote", "version": "1", "at": "2026-11-02T10:00:00+00:00"},
           {"action": "promote", "version": "2", "at": "2026-11-09T10:00:00+00:00"},
           {"action": "rollback", "version": "1", "at": "2026-11-10T10:00:00+00:00"}]
    assert promotion_anchor("1", log, {}, None) == (date(2026, 11, 2), "promotion log")
    assert promotion_anchor("2", log, {"detloop.round_id": "r-2"}, "2026-01-19")[0] == date(2026, 1, 19)
    assert promotion_anchor("3", log, {"detloop.promoted_at": "2026-11-20T00:00:00+00:00"}, None)[0] == date(2026, 11, 20)
    day, why = promotion_anchor("4", log, {}, None)
    assert day is None and "no promotion record" in why
    # a bootstrap run for a past day (a backfill, a demo in simulated time) carries its own as_of
    assert promotion_anchor("1", log, {"detloop.as_of": "2026-01-05"}, None) == (
        date(2026, 1, 5), "the version's detloop.as_of tag")
    assert promotion_anchor("1", log, {"detloop.as_of": "2026-12-05"}, None)[0] == date(2026, 11, 2)  # not after it


# ---- targeted rounds ----------------------------------------------------------------------------------------------
def rec(rid: str, status: str = "open", reason: str = "weekly") -> RoundRecord:
    return RoundRecord(rid, "2026-01-12", "2026-01-12T00:00:00", "2026-01-17T00:00:00+00:00", status, None, 1, 0,
                       reason=reason, focus_key=None)


def test_a_drift_round_opens_while_a_weekly_round_is_open_once_per_episode() -> None:
    from detloop.errors import DataError
    from tasks.rounds import RoundFocus, focused_round_id, plan_round

    focus = RoundFocus("drift", "drift-v3-2026-01-20")
    weekly_open = [rec("acme-2026-01-12")]
    rid, why = plan_round(weekly_open, "Acme", date(2026, 1, 21), ["cam1"], None, "skip", focus=focus)
    assert (rid, why) == ("acme-drift-v3-2026-01-20", "new") and rid == focused_round_id("Acme", focus)
    assert plan_round([*weekly_open, rec(rid, reason="drift")], "Acme", date(2026, 1, 22), ["cam1"], None, "skip",
                      focus=focus) == (rid, "resume")
    # the drift round does not block the next weekly round; an open weekly round still does
    assert plan_round([rec(rid, reason="drift")], "Acme", date(2026, 1, 19), None, None, "skip")[1] == "new"
    assert plan_round(weekly_open, "Acme", date(2026, 1, 19), None, None, "skip")[0] is None
    with pytest.raises(DataError, match="needs a key"):
        RoundFocus("drift")


def test_targeted_round_parameters_derive_from_the_episode() -> None:
    from detloop.settings import load_settings
    from flows.drift import drift_event_id, targeted_round

    s = load_settings("configs/test.yaml")
    e = Episode("drift-v3-2026-01-20", "3", "2026-01-20", ["cam1"], ["2026-01-10", "2026-01-19", "2026-01-20"])
    t = targeted_round(s, e)
    assert t["as_of"] == "2026-01-21" and t["dates"] == ["2026-01-19", "2026-01-20"]  # inside the 7-day window
    assert t["round_id"] == "detloop-test-drift-v3-2026-01-20" and t["cameras"] == ["cam1"]
    assert drift_event_id("m", e.episode_id) == drift_event_id("m", "drift-v3-2026-01-20") != drift_event_id("m", "x")
    assert drift_event_id("m", e.episode_id) != drift_event_id("other-model", e.episode_id)


# ---- settings -----------------------------------------------------------------------------------------------------
def test_drift_settings_are_validated_on_load() -> None:
    from detloop.errors import ConfigError
    from detloop.settings import load_settings

    for bad, msg in [({"alarm_statistics": ["psi"], "statistics": ["ks"]}, "not computed"),
                     ({"psi_moderate": 0.3}, "psi_moderate"), ({"permutations": 10}, "permutations"),
                     ({"permutations_refine": 10}, "permutations_refine"),
                     ({"correction": "holm"}, "correction"), ({"alpha": 1.5}, "alpha"),
                     ({"companion_alpha": 0.9}, "companion_alpha")]:
        with pytest.raises(ConfigError, match=msg):
            load_settings("configs/test.yaml", overrides={"drift": bad})


# ---- live accuracy -----------------------------------------------------------------------------------------------
def _gt(n: int, seed: int) -> list[Detections]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        xy = rng.uniform(0, 400, (3, 2))
        out.append(Detections(np.hstack([xy, xy + 40]).astype(np.float32), np.ones(3, np.float32),
                              rng.integers(0, 5, 3)))
    return out


def test_live_map_has_a_bootstrap_interval_over_frames() -> None:
    from tasks.live_accuracy import map_with_interval

    gts = _gt(30, 0)
    m, lo, hi, m50 = map_with_interval(gts, gts, CLASSES, 50, 0.9, 0)
    assert m == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0) and m50 == 1.0
    half = [g if i % 2 else Detections.empty() for i, g in enumerate(gts)]  # every other frame missed
    m, lo, hi, _ = map_with_interval(gts, half, CLASSES, 100, 0.9, 0)
    assert 0.3 < m < 0.7 and lo < m < hi and hi - lo > 0.05
    assert map_with_interval([Detections.empty()] * 3, [Detections.empty()] * 3, CLASSES, 20, 0.9, 0)[0] is None


def test_live_points_pool_recent_rounds_and_leave_drift_rounds_out_of_the_overall() -> None:
    from detloop.settings import load_settings
    from tasks.evaluation import EvalItem
    from tasks.live_accuracy import live_sources, rolling_windows, summarize

    assert rolling_windows(["a", "b", "c"], 2) == [("a", ["a"]), ("b", ["a", "b"]), ("c", ["b", "c"])]
    s = load_settings("configs/test.yaml", overrides={"drift": {"live_rounds": 2, "live_min_frames": 4,
                                                                "bootstrap_resamples": 20}})
    gts = _gt(16, 1)
    items = [EvalItem(f"i{i}.jpg", g, "cam1" if i >= 12 else "cam0") for i, g in enumerate(gts)]
    sources = ["round:a"] * 4 + ["round:b"] * 4 + ["round:c"] * 4 + ["round:d"] * 4
    pooled, series = summarize(items, sources, gts, s, ["round:a", "round:b", "round:c", "round:d"],
                               {"round:d"}, {"round:c": 0.5}, {"round:c": "2026-01-26"})
    overall = pooled[0]
    # the last 2 weekly rounds, b and c: d is a drift round (it does not push b out), a is too old
    assert overall.camera == "all" and overall.n_frames == 8
    assert [(p.camera, p.n_frames) for p in pooled] == [("all", 8), ("cam0", 8), ("cam1", 4)]  # cam1: round d
    assert live_sources(["round:a", "round:b", "round:c", "round:d"], {"round:d"}, 2) == {"round:b", "round:c",
                                                                                         "round:d"}
    # a drift round older than the last 2 rounds has served its window; weekly rounds count on their own
    assert live_sources(["round:a", "round:x", "round:b", "round:c"], {"round:x"}, 2) == {"round:b", "round:c"}
    assert live_sources(["round:a", "round:x", "round:y"], {"round:x", "round:y"}, 2) == {"round:a", "round:x",
                                                                                          "round:y"}
    assert live_sources(["round:a"], set(), 0) == set()
    assert [p.label for p in series] == ["a", "b", "c"] and series[2].n_frames == 8 and series[2].golden_map == 0.5
    assert series[0].map is not None and series[0].as_of is None


def test_a_carried_camera_gets_a_live_point_of_its_frames_since_the_onset_with_the_estimate_beside() -> None:
    """:func:`tasks.live_accuracy.carried_points`: only the carried camera's frames in the live window dated on or
    after its onset count; fewer than ``drift.release_check_min_frames`` give a note and no numbers."""
    from detloop.settings import load_settings
    from tasks.evaluation import EvalItem
    from tasks.live_accuracy import carried_points

    s = load_settings("configs/test.yaml", overrides={"drift": {"live_rounds": 2, "release_check_min_frames": 3,
                                                                "bootstrap_resamples": 20}})
    gts = _gt(12, 2)
    items = [EvalItem(f"i{i}.jpg", g, "cam1" if i < 8 else "cam0") for i, g in enumerate(gts)]
    dates = ["2026-01-05"] * 4 + ["2026-01-20"] * 4 + ["2026-01-20"] * 4
    sources = ["round:a"] * 2 + ["round:b"] * 2 + ["round:c"] * 4 + ["round:c"] * 4
    preds = [g if i not in (6, 7) else Detections.empty() for i, g in enumerate(gts)]  # two misses since the onset
    seen: list[int] = []

    def est(dets: list[Detections]) -> float:
        seen.append(len(dets))
        return 0.9

    order = ["round:a", "round:b", "round:c"]
    got = carried_points(items, dates, sources, preds, s, order, set(), {"cam1": "2026-01-10", "cam0": "2026-01-25"},
                         est)
    by = {p.camera: p for p in got}
    assert by["cam1"].n_frames == 4 and by["cam1"].label == "since 2026-01-10" and seen == [4]  # round a: too old
    assert 0.2 < by["cam1"].map50 < 0.8 and by["cam1"].estimate == 0.9  # half its frames missed
    assert by["cam0"].n_frames == 0 and by["cam0"].map50 is None and by["cam0"].estimate is None
    assert by["cam0"].note == "not enough control frames (0 < drift.release_check_min_frames = 3)"


def test_an_announced_episode_without_its_round_is_unanswered_from_the_next_monitor_day() -> None:
    from tasks.drift import Episode, unanswered

    def ep(eid: str, **kw: object) -> Episode:
        base = {"episode_id": eid, "model_version": "3", "opened_on": "2026-01-27", "cameras": ["cam3"],
                "days": ["2026-01-27"], "event_id": "e", "round_id": f"soak-{eid}", "announced_for": "2026-01-28"}
        return Episode(**{**base, **kw})  # type: ignore[arg-type]

    eps = [ep("a"), ep("b"), ep("c", status="closed"), ep("d", model_version="2"), ep("e", event_id=None),
           ep("f", announced_for="2026-01-29"), ep("g", announced_for=None)]
    got = unanswered(eps, "3", ["soak-b"], "2026-01-29")
    # b answered; c closed; d another champion's; e never announced; f announced on this very day
    assert [e.episode_id for e in got] == ["a", "g"]
    assert unanswered(eps, "3", ["soak-a", "soak-b", "soak-g"], "2026-01-29") == []


def test_a_targeted_round_budget_is_per_camera_when_set_else_the_round_or_weekly_budget() -> None:
    from tasks.drift import round_budget

    assert round_budget(DriftSettings(), 24, 2) == 24  # the weekly budget
    assert round_budget(DriftSettings(round_budget=40), 24, 2) == 40
    assert round_budget(DriftSettings(round_budget=40, round_frames_per_camera=50), 24, 2) == 100
    assert round_budget(DriftSettings(round_frames_per_camera=50), 24, 1) == 50


def test_a_targeted_round_weighs_companions_less_than_the_cameras_that_drifted_on_their_own() -> None:
    from detloop.settings import load_settings
    from flows.drift import targeted_round
    from tasks.drift import Episode, round_camera_weights

    e = Episode("drift-v7-2026-02-03", "7", "2026-02-03", ["cam3", "cam0", "cam4"], ["2026-02-03"],
                companions={"cam0": "star share 0.036 -> 0.079", "cam4": "star share 0.037 -> 0.115"})
    assert round_camera_weights(e, DriftSettings()) == {"cam0": 0.5, "cam4": 0.5}
    assert round_camera_weights(e, DriftSettings(companion_round_weight=0.25)) == {"cam0": 0.25, "cam4": 0.25}
    assert round_camera_weights(e, DriftSettings(companion_round_weight=1.0)) == {}  # every camera alike
    assert round_camera_weights(replace(e, companions={}), DriftSettings()) == {}
    t = targeted_round(load_settings("configs/test.yaml"), e)
    assert t["camera_weights"] == {"cam0": 0.5, "cam4": 0.5} and t["cameras"] == ["cam3", "cam0", "cam4"]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="companion_round_weight"):
            DriftSettings(companion_round_weight=bad)


def test_a_reasked_camera_samples_its_drifted_days_since_its_last_round_inside_the_window() -> None:
    """The eleventh tiled soak: cam3's second round had two days of it (238 frames for five cameras), while it had
    drifted, unasked, on the days since its first round (docs/drift.md)."""
    from detloop.settings import load_settings
    from flows.drift import targeted_round
    from tasks.drift import Episode, reasked_days

    first = Episode("drift-v6-2026-01-27", "6", "2026-01-27", ["cam3", "cam4"], ["2026-01-26", "2026-01-27"],
                    round_id="r-first")
    never = Episode("drift-v6-2026-01-30", "6", "2026-01-30", ["cam1"], ["2026-01-29", "2026-01-30"])  # no round
    new = Episode("drift-v9-2026-02-03", "9", "2026-02-03", ["cam3", "cam0", "cam1"], ["2026-02-02", "2026-02-03"],
                  companions={"cam0": "star share ..."})
    drifted = {"cam3": ["2026-01-25", "2026-01-27", "2026-01-28", "2026-01-30", "2026-02-02", "2026-02-05"],
               "cam0": ["2026-01-30"], "cam1": ["2026-01-29", "2026-01-30"]}
    got = reasked_days(new, [first, never, new], drifted, "2026-01-28", "2026-02-04")
    # cam3: from the day after its first episode opened, inside the window, with the new episode's days; cam0 and
    # cam1 were never in an answered episode: the episode's days only
    assert got == {"cam3": ["2026-01-28", "2026-01-30", "2026-02-02", "2026-02-03"]}
    # the window's start bounds it; a later answered episode moves the start; no drifted day since: nothing listed
    assert reasked_days(new, [first], drifted, "2026-01-30", "2026-02-04") == {
        "cam3": ["2026-01-30", "2026-02-02", "2026-02-03"]}
    later = replace(first, episode_id="drift-v6-2026-01-29", opened_on="2026-01-29")
    assert reasked_days(new, [first, later], drifted, "2026-01-28", "2026-02-04")["cam3"][0] == "2026-01-30"
    assert reasked_days(new, [first], {"cam3": ["2026-02-02"]}, "2026-01-28", "2026-02-04") == {}
    # an episode opened after this one is not its past
    assert reasked_days(first, [first, replace(new, round_id="r-new")], drifted, "2026-01-21", "2026-01-28") == {}
    # the round's payload carries the recorded days; an episode without them, none
    s = load_settings("configs/test.yaml")
    assert targeted_round(s, replace(new, round_days=got))["camera_dates"] == got
    assert targeted_round(s, new)["camera_dates"] == {}
    assert DriftSettings().reasked_round_days is True


# ---- cameras a promotion must not make the new normal (drift.carry_unrecovered) --------------------------------
def test_unrecovered_cameras_are_those_an_earlier_champion_last_saw_drifting() -> None:
    from tasks.drift import Episode, unrecovered_cameras

    eps = [
        Episode("drift-v3-2026-01-05", "3", "2026-01-05", ["cam0", "cam2"], ["2026-01-04", "2026-01-05"],
                recovered=["cam0"], status="closed"),
        Episode("drift-v4-2026-01-20", "4", "2026-01-20", ["cam1"], ["2026-01-18", "2026-01-20"]),  # still open
        Episode("drift-v4-2026-01-10", "4", "2026-01-10", ["cam3"], ["2026-01-09"], recovered=["cam3"]),
        Episode("drift-v5-2026-01-25", "5", "2026-01-25", ["cam4"], ["2026-01-24"]),  # the new champion's own
    ]
    assert unrecovered_cameras(eps, "5") == {"cam1": "2026-01-18", "cam2": "2026-01-04"}
    # cam0 recovered in v3's episode but drifted again under v4: its latest episode decides
    again = [*eps, Episode("drift-v4-2026-01-22", "4", "2026-01-22", ["cam0"], ["2026-01-21", "2026-01-22"])]
    assert unrecovered_cameras(again, "5")["cam0"] == "2026-01-21"
    # cam1 was carried into v4 already (onset the 2nd): the first onset is kept across promotions
    assert unrecovered_cameras(eps, "5", {"4": {"cam1": "2026-01-02"}})["cam1"] == "2026-01-02"
    assert unrecovered_cameras(eps, "5", {"4": {"cam1": "2026-01-30"}})["cam1"] == "2026-01-18"
    assert unrecovered_cameras([], "5") == {}


def test_carried_reference_days_end_before_the_onset_per_camera() -> None:
    from tasks.drift import carried_reference_days

    d = date.fromisoformat
    production = {"cam1": [d("2026-01-1" + str(k)) for k in range(0, 10)], "cam2": [d("2026-01-15")]}
    got = carried_reference_days(production, {"cam1": "2026-01-16", "cam2": "2026-01-15", "cam9": "2026-01-16"}, 3)
    assert got == {"cam1": [d("2026-01-13"), d("2026-01-14"), d("2026-01-15")]}  # cam2: nothing before; cam9: none


def test_a_carried_camera_is_released_only_when_its_estimate_is_back_near_its_pre_onset_level() -> None:
    from tasks.drift import Verdict, recovered_by_estimate, release_recovered

    assert recovered_by_estimate(0.70, 0.66, 0.05) and not recovered_by_estimate(0.70, 0.64, 0.05)
    assert not recovered_by_estimate(None, 0.7, 0.05) and not recovered_by_estimate(0.7, float("nan"), 0.05)
    v = Verdict("cam2", "2026-02-01", "drift", ["brightness:ks", "embedding:mmd"])
    back = release_recovered(v, "2026-01-18", 0.70, 0.68, 0.05)
    assert back.status == "clean" and back.signals == v.signals and "recovered" in back.note
    still = release_recovered(v, "2026-01-18", 0.70, 0.52, 0.05)
    assert still.status == "drift" and "0.520 against 0.700" in still.note
    assert release_recovered(v, "2026-01-18", None, 0.68, 0.05) == v  # no estimate: the inputs decide
    clean = Verdict("cam2", "2026-02-01", "clean")
    assert release_recovered(clean, "2026-01-18", 0.70, 0.10, 0.05) == clean  # never turns clean into drift


def test_labels_that_the_estimate_over_reads_hold_a_carried_camera() -> None:
    """The labelled check of a release: the estimate on the camera's labelled frames since the onset reads 0.80
    where their mAP50 is 0.55 (a repaint fooling the confidences): the day stays drifted, both numbers in the note;
    a check within the tolerance, or one without numbers, lets the estimate decide."""
    from tasks.drift import LabelledCheck, Verdict, estimate_overreads, release_recovered

    assert estimate_overreads(0.55, 0.80, 0.05) and not estimate_overreads(0.55, 0.60, 0.05)
    assert not estimate_overreads(0.80, 0.55, 0.05)  # under-reading never blocks a release
    assert not estimate_overreads(None, 0.8, 0.05) and not estimate_overreads(0.5, float("nan"), 0.05)
    v = Verdict("cam3", "2026-02-01", "drift", ["hue:ks", "embedding:mmd"])
    held = release_recovered(v, "2026-01-18", 0.70, 0.69, 0.05, LabelledCheck(12, 0.55, 0.80))
    assert held.status == "drift" and "12 labelled control frames" in held.note and "0.800 where their mAP50 is 0.550" in held.note
    ok = release_recovered(v, "2026-01-18", 0.70, 0.69, 0.05, LabelledCheck(12, 0.66, 0.69))
    assert ok.status == "clean"
    assert release_recovered(v, "2026-01-18", 0.70, 0.69, 0.05, LabelledCheck(3, None, None)).status == "clean"
    # a day the estimate itself calls down stays down whatever the check
    assert release_recovered(v, "2026-01-18", 0.70, 0.50, 0.05, LabelledCheck(12, 0.66, 0.69)).status == "drift"


def test_a_day_that_also_drifts_against_recent_traffic_is_not_released() -> None:
    """A release absorbs the drift a camera was carried for, not the next: a day whose label-free estimate is back
    but which drifts against the camera's recent traffic too stays drifted, with the signals in the note; a day
    clean against its recent traffic (or with no such comparison) is released as before."""
    from tasks.drift import Verdict, release_recovered

    v = Verdict("cam2", "2026-02-13", "drift", ["log_area:ks", "embedding:mmd"])
    new = Verdict("cam2", "2026-02-13", "drift", ["log_area:ks", "detections:ks"])
    held = release_recovered(v, "2026-02-03", 0.73, 0.84, 0.05, recent=new)
    assert held.status == "drift" and "a new drift, held" in held.note and "log_area:ks" in held.note
    assert release_recovered(v, "2026-02-03", 0.73, 0.84, 0.05,
                             recent=Verdict("cam2", "2026-02-13", "clean")).status == "clean"
    assert release_recovered(v, "2026-02-03", 0.73, 0.84, 0.05, recent=None).status == "clean"
    # an estimate still down: drifted, whatever the recent comparison says
    assert release_recovered(v, "2026-02-03", 0.73, 0.50, 0.05,
                             recent=Verdict("cam2", "2026-02-13", "clean")).status == "drift"


def test_an_answered_carried_camera_is_held_from_a_new_episode_until_its_grace_ends() -> None:
    """The fifth tiled soak's churn: a carried camera whose drift an earlier champion's round answered opened a new
    episode under every champion. Its answered episode gives it ``hold_days`` from its opening
    (:func:`answered_grace`); a drifted day like its traffic since the onset is held (:func:`hold_answered`) and
    opens no episode (:func:`advance` with ``held``), though its streak grows: once the grace is over, or on a day
    that drifts against that traffic too (a new drift), the episode opens at once."""
    from tasks.drift import answered_grace, hold_answered

    d = days(20)
    rule = cfg(alarm_consecutive_days=2, reopen_after_days=14)
    _, eps = replay({x: vd(x, cam3="drift") for x in d[:2]}, rule, "4")
    first = f"drift-v4-{d[1]}"
    assert answered_grace(eps[first], 14) is None  # not answered: no grace
    eps = _answer(eps, first)
    grace = answered_grace(eps[first], 14)
    assert grace is not None and grace.until == d[15] and grace.round_id == f"round-{first}"
    assert answered_grace(eps[first], 0) is None  # 0: a champion change asks again, as before
    assert answered_grace(eps[first], 14, {f"round-{first}": d[2]}) is None  # trained without a promotion

    like = Verdict("cam3", "", "clean")
    new = Verdict("cam3", "", "drift", ["log_area:ks"])
    v = Verdict("cam3", d[4], "drift", ["embedding:mmd"])
    kept, held = hold_answered(v, grace, replace(like, day=d[4]))
    assert held and kept.status == "drift" and f"no new episode before {d[15]}" in kept.note
    kept, held = hold_answered(v, grace, replace(new, day=d[4]))
    assert not held and "a new drift" in kept.note and "log_area:ks" in kept.note
    assert hold_answered(v, grace, None) == (v, False)  # no comparison: as before
    assert hold_answered(replace(v, day=d[15]), grace, like) == (replace(v, day=d[15]), False)  # grace over
    assert hold_answered(replace(v, status="clean"), grace, like)[1] is False
    assert hold_answered(v, None, like) == (v, False)

    # under the next champion (v5): held every day of the grace, its streak grows, and the first day after the
    # grace opens the episode at once
    st = MonitorState("5")
    for x in d[3:15]:
        st, changed, opened = advance(st, x, vd(x, cam3="drift", cam0="clean"), rule, {}, held={"cam3"})
        assert opened == [] and changed == {}
    assert len(st.cameras["cam3"].streak) == 12
    st, changed, opened = advance(st, d[15], vd(d[15], cam3="drift"), rule, {})
    assert opened == [f"drift-v5-{d[15]}"] and changed[opened[0]].cameras == ["cam3"]
    # a new drift inside the grace (not held that day) opens it at once too; another camera is never held
    st = MonitorState("5")
    st, _, opened = advance(st, d[3], vd(d[3], cam3="drift", cam0="drift"), rule, {}, held={"cam3"})
    st, _, opened = advance(st, d[4], vd(d[4], cam3="drift", cam0="drift"), rule, {}, held={"cam3"})
    assert opened == [f"drift-v5-{d[4]}"] and st.cameras["cam3"].episode is None
    st, _, opened = advance(st, d[5], vd(d[5], cam3="drift"), rule, {})
    assert opened == [f"drift-v5-{d[5]}"] and st.cameras["cam3"].episode == opened[0]


def test_a_held_camera_is_asked_again_after_a_week_then_ever_less_often() -> None:
    """The eighth tiled soak: the repaint's round brought cam3 most of the way back, and the 14-day hold left it
    without a round of its own for the second week (back in 3 weeks, not 2). The hold is ``hold_days`` from the
    answered episode's opening, doubled for each earlier answered episode of the same drift
    (:func:`answered_before`, :func:`hold_span`): the first follow-up comes a week on, the later ones ever later."""
    from tasks.drift import answered_before, answered_grace, hold_span

    assert [hold_span(7, k) for k in range(4)] == [7, 14, 28, 56]
    assert hold_span(0, 3) == 0
    assert hold_span(7, 500) == 3650  # capped: a date stays a date

    d = days(40)

    def answered(eid: str, opened: str, cams: list[str], rnd: str | None = "r") -> Episode:
        return Episode(eid, "4", opened, cams, [opened], [], round_id=f"{rnd}-{eid}" if rnd else None)

    onset = d[1]
    before = answered("old", d[0], ["cam3"])  # before the onset: another drift's episode
    e1 = answered("e1", d[2], ["cam3", "cam0"])
    e2 = answered("e2", d[9], ["cam3"])
    unanswered = answered("e3", d[12], ["cam3"], rnd=None)
    other = answered("e4", d[13], ["cam1"])
    e5 = answered("e5", d[23], ["cam3", "cam1"])
    eps = [before, e1, e2, unanswered, other, e5]
    counts = [answered_before(eps, "cam3", e, onset) for e in (e1, e2, e5)]
    assert counts == [0, 1, 2]
    graces = [answered_grace(e, 7, None, n) for e, n in zip((e1, e2, e5), counts, strict=True)]
    assert [g.until for g in graces if g is not None] == [d[9], d[23], days(1, date.fromisoformat(d[23])
                                                                            + timedelta(days=28))[0]]
    # a round trained without a promotion answered nothing: it neither holds nor counts
    failed = {e2.round_id: d[11]}
    assert answered_before(eps, "cam3", e5, onset, failed) == 1 and answered_grace(e2, 7, failed, 1) is None
    assert answered_before(eps, "cam0", e5, onset) == 1  # cam0 was in e1 only
    assert answered_before(eps, "cam3", e1, d[5]) == 0  # a later onset: a new drift, counted afresh


def test_a_carried_cameras_recent_traffic_is_its_rows_since_the_onset_when_there_are_enough() -> None:
    from tasks.drift import since_onset

    rows = Features(np.array(["cam3"] * 6), np.array(["2026-01-22"] * 3 + ["2026-01-27"] * 3), np.zeros(6),
                    np.zeros(6), np.ones(6, np.int64), None, np.arange(6), np.full(6, 0.9), np.zeros(6, np.int64),
                    np.zeros(6))
    got = since_onset(rows, "2026-01-26", 3)
    assert got.day.tolist() == ["2026-01-27"] * 3 and got.n_boxes == 3
    assert since_onset(rows, "2026-01-26", 4).n_frames == 6  # too few since the onset: all of them
    assert since_onset(rows, "2026-01-28", 1).n_frames == 6


def test_a_round_trained_without_a_promotion_frees_its_still_drifting_camera_after_k_days_since_the_round() -> None:
    from tasks.drift import answered_in_vain

    d = days(8)
    rule = cfg(alarm_consecutive_days=2, reopen_after_days=14)
    state, eps = replay({x: vd(x, cam1="drift") for x in d[:2]}, rule, "1")
    first = f"drift-v1-{d[1]}"
    eps = _answer(eps, first)
    failed = {f"round-{first}": d[3]}  # the round's day: its frames are from before d3
    assert not answered_in_vain(eps[first], d[:4], failed, 2)  # one drifted day since the round
    assert answered_in_vain(eps[first], d[:5], failed, 2)
    assert not answered_in_vain(eps[first], d[:5], {"another-round": d[3]}, 2)
    st = state
    for x in d[2:5]:
        st, changed, opened = advance(st, x, vd(x, cam1="drift"), rule, eps, failed)
        eps = {**eps, **changed}
    assert opened == [f"drift-v1-{d[4]}"] and eps[first].handed_over == ["cam1"]
    never = cfg(alarm_consecutive_days=2, reopen_after_days=0)  # 0: no episode ever starts a second round
    st, eps0 = replay({x: vd(x, cam1="drift") for x in d[:2]}, never, "1")
    eps0 = _answer(eps0, first)
    for x in d[2:8]:
        st, changed, opened = advance(st, x, vd(x, cam1="drift"), never, eps0, failed)
        assert opened == []


# ---- companions: a class-mix change seen on some cameras, asked of the others --------------------------------------
def _more_stars(f: Features, rng: np.random.Generator, share: float) -> Features:
    f.box_class = np.where(rng.random(f.n_boxes) < share, 4, f.box_class)
    return f


def _mix_day(camera: str, day: str, n: int, stars: float, ref: Features, rule: DriftSettings,
             rng: np.random.Generator) -> tuple[Features, CameraDayStats, Verdict]:
    f = _more_stars(synth(rng, camera, day, n), rng, stars)
    st = compare(ref, f, rule, CLASSES, camera, day)
    return f, st, verdict(st, rule, CLASSES)


def test_the_class_a_class_mix_signal_moved_is_named_with_its_direction_only_from_cameras_it_fired_on() -> None:
    rng = np.random.default_rng(11)
    rule = cfg(alarm_strong_alpha=0.002, permutations_refine=9999)
    ref = synth(rng, "cam0", "ref", 200)
    _, st, v = _mix_day("cam0", "d", 120, 0.15, ref, rule, rng)
    assert any(s.startswith("class_mix:") for s in v.signals)
    named = shifted_classes([(v, st)], CLASSES)
    assert named["star"] == 1
    assert all(named[c] == -1 for c in named if c != "star")  # the stars replaced boxes of other classes
    fewer = replace(st, class_shares={c: [w, r] for c, (r, w) in st.class_shares.items()})  # the same, reversed
    assert shifted_classes([(v, fewer)], CLASSES) == {c: -k for c, k in named.items()}
    quiet = replace(v, signals=["brightness:ks"])  # the shares moved but the class mix did not fire there
    assert shifted_classes([(quiet, st)], CLASSES) == {}


def test_a_camera_whose_share_of_the_named_class_moved_the_same_way_joins_and_one_without_does_not() -> None:
    rng = np.random.default_rng(12)
    rule = cfg(permutations_refine=9999)
    refs = {c: synth(rng, c, "ref", 168) for c in ("cam1", "cam2", "cam4")}
    # 72 frames (three pooled days of 24): a gain of about 6 points of star share that the camera's own twenty-odd
    # tests do not call
    cands = {"cam1": (refs["cam1"], _more_stars(synth(rng, "cam1", "d", 72), rng, 0.06)),
             "cam2": (refs["cam2"], synth(rng, "cam2", "d", 72)),
             "cam4": (refs["cam4"], _more_stars(synth(rng, "cam4", "d", 72), rng, 0.06))}
    own = {c: verdict(compare(r, w, rule, CLASSES, c, "d"), rule, CLASSES).status for c, (r, w) in cands.items()}
    found = companions(cands, {"star": 1}, rule, CLASSES, "d")
    assert [c.camera for c in found] == ["cam1", "cam4"] and own["cam1"] == own["cam4"] == "clean"
    assert all(c.share > c.reference_share and c.p < rule.companion_alpha and c.cls == "star" for c in found)
    assert companions(cands, {"star": -1}, rule, CLASSES, "d") == []  # the other direction: nobody
    assert companions(cands, {"star": 1}, cfg(companion_alpha=0.0), CLASSES, "d") == []  # off
    few = {"cam1": (refs["cam1"], cands["cam1"][1].select(cands["cam1"][1].camera == "none"))}
    assert companions(few, {"star": 1}, rule, CLASSES, "d") == []  # no frames: not asked


def test_stationary_cameras_join_an_episode_at_about_the_companion_level_not_more() -> None:
    rng = np.random.default_rng(13)
    rule = cfg(permutations=199, companion_days=1)
    joined = 0
    trials = 60
    for t in range(trials):
        cands = {c: (synth(rng, c, "ref", 100), synth(rng, c, f"d{t}", 40)) for c in ("cam1", "cam2")}
        joined += bool(companions(cands, {"star": 1, "disc": -1}, rule, CLASSES, f"d{t}"))
    assert joined / trials <= 0.12  # family-wise 5 % per episode (Holm over 2 cameras x 2 classes), with slack


def test_asked_on_every_day_of_a_week_stationary_cameras_still_join_at_about_the_companion_level() -> None:
    """Seven asks on windows that grow by a day each (as an episode's asks are): Bonferroni over the asks (half the
    level on the first, the rest shared by the six after) keeps a stationary camera's chance of joining the episode
    at any of them at about companion_alpha, not 7 x."""
    rng = np.random.default_rng(14)
    rule = cfg(permutations=199, companion_days=7)
    trials, joined = 40, 0
    for t in range(trials):
        refs = {c: synth(rng, c, "ref", 100) for c in ("cam1", "cam2")}
        window = {c: synth(rng, c, f"t{t}", 20) for c in ("cam1", "cam2")}
        any_join = False
        for k in range(rule.companion_days):
            window = {c: Features.concat([w, synth(rng, c, f"t{t}", 20)]) for c, w in window.items()}
            any_join |= bool(companions({c: (refs[c], window[c]) for c in refs}, {"star": 1}, rule, CLASSES,
                                        f"t{t}d{k}", late=k > 0))
        joined += any_join
    assert joined / trials <= 0.12


def _class_mix_on_cam0(d: list[str], drifted: int) -> dict[str, dict[str, Verdict]]:
    """cam0 drifted on its class mix the first ``drifted`` days of ``d``, clean after; cam1 and cam2 always clean."""
    return {x: {"cam0": Verdict("cam0", x, "drift" if i < drifted else "clean",
                                ["class_mix:chi2"] if i < drifted else []),
                "cam1": Verdict("cam1", x, "clean"), "cam2": Verdict("cam2", x, "clean")} for i, x in enumerate(d)}


def test_an_episode_opened_on_a_class_mix_change_is_joined_by_its_companions_who_then_leave_like_any_camera() -> None:
    rule = cfg(alarm_consecutive_days=2, close_after_clean_days=2, companion_days=1)
    d = days(6)
    seq = _class_mix_on_cam0(d, 3)
    asked: list[tuple[str, str, list[str]]] = []

    def joining(day: str, e: Episode, st: MonitorState, known: Any) -> tuple[dict[str, int], list[Companion]]:
        cands = companion_candidates(st, known, day, [c for c in ("cam1", "cam2") if c not in e.cameras])
        asked.append((day, e.episode_id, cands))
        return {"star": 1}, [Companion("cam1", "star", 1, 0.02, 0.07, 0.004)]

    early, _ = replay({x: seq[x] for x in d[:3]}, rule, "5", companions_of=joining)
    assert early.cameras["cam1"].episode == f"drift-v5-{d[1]}"  # clean on d2, but K=2 clean days from joining
    asked.clear()
    state, eps = replay(seq, rule, "5", companions_of=joining)
    (e,) = eps.values()
    assert asked == [(d[1], f"drift-v5-{d[1]}", ["cam1", "cam2"])]  # asked once, the day it opened
    assert e.cameras == ["cam0", "cam1"] and "star share 0.020 -> 0.070" in e.companions["cam1"]
    assert e.shifted == {"star": 1} and e.joined_late == {}
    assert e.status == "closed" and e.recovered == ["cam0", "cam1"] and e.closed_on == d[4]
    # a camera already in an open episode is not asked; nor a silenced one
    st = MonitorState("5", d[0], {"cam1": CameraTrack(episode="x"), "cam2": CameraTrack()})
    other = {"x": Episode("x", "5", d[0], ["cam1"], [d[0]]),
             "y": Episode("y", "5", d[0], ["cam3"], [d[0]], status="closed", silenced_until=d[3])}
    assert companion_candidates(st, other, d[1], ["cam1", "cam2", "cam3"]) == ["cam2"]
    # joining again (a re-run) changes nothing
    _, e2 = join_companions(state, e, [Companion("cam1", "star", 1, 0.02, 0.07, 0.004)])
    assert e2.cameras == e.cameras and e2.companions == e.companions


def test_each_ask_is_at_the_companion_level_spread_over_the_days_an_episode_asks() -> None:
    rng = np.random.default_rng(12)
    rule = cfg(permutations_refine=9999, companion_days=1)
    refs = {c: synth(rng, c, "ref", 168) for c in ("cam1", "cam4")}
    cands = {c: (refs[c], _more_stars(synth(rng, c, "d", 72), rng, g)) for c, g in (("cam1", 0.06), ("cam4", 0.03))}
    one = companions(cands, {"star": 1}, rule, CLASSES, "d")
    assert companion_level(rule) == rule.companion_alpha
    assert companion_level(rule, late=True) == 0.0  # companion_days 1: no later asks
    week = cfg(permutations_refine=9999, companion_days=7)
    assert companion_level(week) == pytest.approx(rule.companion_alpha / 2)  # half on the opening day
    assert companion_level(week, late=True) == pytest.approx(rule.companion_alpha / 12)  # the rest over 6 days
    assert companion_level(week) + 6 * companion_level(week, late=True) == pytest.approx(rule.companion_alpha)
    for late in (False, True):
        found = companions(cands, {"star": 1}, week, CLASSES, "d", late=late)
        assert [c.camera for c in found] == [c.camera for c in one if c.p < companion_level(week, late)]
    assert any(companion_level(week, True) <= c.p < rule.companion_alpha for c in one)  # the levels tell them apart


def test_the_frames_an_ask_reads_grow_from_the_opening_days_pool() -> None:
    e = Episode("drift-v5-2026-02-03", "5", "2026-02-03", ["cam0"], ["2026-02-02", "2026-02-03"])
    assert companion_window_days(e, "2026-02-03", 2) == ["2026-02-02", "2026-02-03"]  # as its own tests read
    assert companion_window_days(e, "2026-02-05", 2) == ["2026-02-02", "2026-02-03", "2026-02-04", "2026-02-05"]
    assert companion_window_days(e, "2026-02-04", 1) == ["2026-02-03", "2026-02-04"]
    rng = np.random.default_rng(4)
    by_day = {d: synth(rng, "cam1", d, 10) for d in ("2026-02-01", "2026-02-02", "2026-02-04", "2026-02-06")}
    w = companion_window(by_day, e, "2026-02-05", 2)
    assert sorted(set(w.day.tolist())) == ["2026-02-02", "2026-02-04"] and w.n_frames == 20


def test_a_camera_found_after_the_opening_day_opens_its_own_answered_episode_and_the_asks_stop_after_their_days() -> None:
    rule = cfg(alarm_consecutive_days=2, close_after_clean_days=2, companion_days=3)
    d = days(7)
    seq = _class_mix_on_cam0(d, 5)
    asked: list[tuple[str, str, list[str]]] = []

    def joining(day: str, e: Episode, st: MonitorState, known: Any) -> tuple[dict[str, int], list[Companion]]:
        cands = companion_candidates(st, known, day, [c for c in ("cam1", "cam2")
                                                      if c not in e.cameras and c not in e.joined_late])
        asked.append((day, e.episode_id, cands))
        shifts = {"star": 1} if day == e.opened_on else e.shifted
        return shifts, ([Companion("cam1", "star", 1, 0.02, 0.07, 0.004)] if day >= d[2] and "cam1" in cands else [])

    _, eps = replay(seq, rule, "5", answer=True, companions_of=joining)
    parent, child = eps[f"drift-v5-{d[1]}"], eps[f"drift-v5-{d[2]}"]
    # opened d1 (asked then), asked again d2 (cam1 found), d3 (cam2 only); never d4: companion_days=3
    assert [(a[0], a[2]) for a in asked] == [(d[1], ["cam1", "cam2"]), (d[2], ["cam1", "cam2"]), (d[3], ["cam2"])]
    assert parent.cameras == ["cam0"] and parent.joined_late == {"cam1": child.episode_id}
    assert child.cameras == ["cam1"] and child.opened_on == d[2] and child.round_id == "replayed"  # answered
    assert f"grew as on the cameras of {parent.episode_id}" in child.companions["cam1"]
    assert child.signals == ["companion:star"] and child.days == [d[0], d[1], d[2]]
    assert child.status == "closed" and child.closed_on == d[4]  # 2 clean days from joining
    asked.clear()
    _, once = replay(seq, cfg(alarm_consecutive_days=2, close_after_clean_days=2, companion_days=1), "5",
                     companions_of=joining)
    assert [a[0] for a in asked] == [d[1]] and len(once) == 1  # companion_days=1: the opening day only
    # the day's own episode takes a late companion in rather than a second id for the day
    known = {f"drift-v5-{d[2]}": Episode(f"drift-v5-{d[2]}", "5", d[2], ["cam2"], [d[2]])}
    st2, e2, p2 = join_late(MonitorState("5"), d[2], parent, [Companion("cam1", "star", 1, 0.02, 0.07, 0.004)],
                            known, 2)
    assert e2.episode_id == f"drift-v5-{d[2]}" and e2.cameras == ["cam1", "cam2"]
    assert st2.cameras["cam1"].episode == e2.episode_id and p2.joined_late["cam1"] == e2.episode_id

"""The drift statistics against scipy and hand-computed values; frames, not boxes, as the unit of resampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency, false_discovery_control, ks_2samp, wasserstein_distance

from tasks import drift_stats as ds


def test_psi_matches_the_hand_computed_value() -> None:
    # 50/50 -> 80/20 with half a count added per bin: p = (50.5, 50.5)/101, q = (80.5, 20.5)/101
    p, q = np.array([50.5, 50.5]) / 101, np.array([80.5, 20.5]) / 101
    want = float(np.sum((q - p) * np.log(q / p)))
    assert ds.psi_from_counts(np.array([50, 50]), np.array([80, 20])) == pytest.approx(want, rel=1e-12)
    assert ds.psi_from_counts(np.array([50, 50]), np.array([80, 20]), pseudo=0) == pytest.approx(
        0.3 * np.log(0.8 / 0.5) + (-0.3) * np.log(0.2 / 0.5), rel=1e-12)  # the textbook value without it
    assert ds.psi_from_counts(np.array([5, 5]), np.array([1, 1])) == 0.0
    # quantile bins of the reference: 0..99 in 4 bins of 25; the window puts 40/20/20/20 in them
    ref = np.arange(100.0)
    cur = np.r_[np.full(40, 1.0), np.full(20, 30.0), np.full(20, 60.0), np.full(20, 90.0)]
    p, q = np.full(4, 25.5) / 102, (np.array([40, 20, 20, 20]) + 0.5) / 102
    assert ds.psi(ref, cur, 4) == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-12)
    # an empty window bin stays finite, and counts less than under a 1e-4 floor of the shares
    p, q = np.full(4, 0.25), np.maximum(np.array([10, 10, 10, 0]) / 30, 1e-4)
    floored = float(np.sum((q - p) * np.log(q / p)))
    assert 0 < ds.psi_from_counts(np.array([50, 50, 50, 50]), np.array([10, 10, 10, 0])) < floored / 2
    assert np.isnan(ds.psi_from_counts(np.array([0, 0]), np.array([1, 1])))
    assert [ds.psi_bins_for(n, 10) for n in (3, 24, 40, 400)] == [2, 4, 8, 10]


def test_psi_bands_and_the_noise_floor() -> None:
    assert [ds.psi_band(v) for v in (0.0, 0.099, 0.1, 0.199, 0.2, 3.0)] == [
        "stable", "stable", "moderate", "moderate", "significant", "significant"]
    rng = np.random.default_rng(0)
    draws = np.array([ds.psi(rng.normal(size=280), rng.normal(size=40), 10) for _ in range(300)])
    floor = ds.psi_noise_floor(10, 280, 40)
    assert floor == pytest.approx(9 * (1 / 280 + 1 / 40))
    assert 0.6 * floor < np.mean(draws) < 1.2 * floor  # what one distribution gives by noise alone
    assert np.mean(draws >= 0.2) > 0.3  # "significant" by noise alone with 10 bins at 40 frames
    fewer = np.array([ds.psi(rng.normal(size=280), rng.normal(size=40), ds.psi_bins_for(40, 10))
                      for _ in range(300)])
    assert np.mean(fewer) < np.mean(draws)


def test_frame_level_tests_are_scipys() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=200), rng.normal(0.3, 1.2, size=50)
    r = ks_2samp(a, b)
    assert ds.ks_frames(a, b) == (pytest.approx(r.statistic), pytest.approx(r.pvalue))
    w, scaled = ds.wasserstein(a, b)
    assert w == pytest.approx(wasserstein_distance(a, b)) and scaled == pytest.approx(w / np.std(a))
    table = np.array([[30, 10, 0], [12, 18, 0]])
    c = chi2_contingency(table[:, :2], correction=False)
    assert ds.chi2_frames(table[0], table[1]) == (pytest.approx(c.statistic), pytest.approx(c.pvalue))
    assert ds.chi2_frames(np.array([5, 0]), np.array([3, 0])) == (0.0, 1.0)


def test_the_vectorised_statistics_equal_scipys_for_every_row() -> None:
    rng = np.random.default_rng(2)
    values = rng.integers(0, 15, 400).astype(float)  # many ties
    classes = rng.integers(0, 4, 400)
    masks = rng.random((6, 400)) < 0.3
    for m, d, c2 in zip(masks, ds.ks_statistic_masks(values, masks), ds.chi2_statistic_masks(classes, 5, masks),
                        strict=True):
        assert d == pytest.approx(ks_2samp(values[m], values[~m]).statistic, abs=1e-12)
        table = np.vstack([np.bincount(classes[m], minlength=4), np.bincount(classes[~m], minlength=4)])
        assert c2 == pytest.approx(chi2_contingency(table, correction=False).statistic, rel=1e-9)


def test_clustered_tests_report_scipys_statistic() -> None:
    rng = np.random.default_rng(3)
    n_ref, n_cur = 60, 20
    frame = np.repeat(np.arange(n_ref + n_cur), rng.integers(0, 6, n_ref + n_cur))
    values = rng.random(frame.size)
    data = ds.Clustered(values, frame, n_ref, n_ref + n_cur)
    d, p = ds.ks_clustered(data, 199, rng)
    assert d == pytest.approx(ks_2samp(values[frame < n_ref], values[frame >= n_ref]).statistic) and 0 < p <= 1
    cls = ds.Clustered(rng.integers(0, 3, frame.size).astype(float), frame, n_ref, n_ref + n_cur)
    chi, _ = ds.chi2_clustered(cls, 3, 199, rng)
    table = np.vstack([np.bincount(cls.values[frame < n_ref].astype(int), minlength=3),
                       np.bincount(cls.values[frame >= n_ref].astype(int), minlength=3)])
    assert chi == pytest.approx(chi2_contingency(table, correction=False).statistic)


def test_permutations_move_whole_frames() -> None:
    """Every resample the statistic sees assigns whole frames, keeps n_ref frames on the reference side, and
    the box masks derived from it never split a frame."""
    n_ref, n = 12, 20
    frame = np.repeat(np.arange(n), 3)
    data = ds.Clustered(np.arange(frame.size, dtype=float), frame, n_ref, n)
    seen: list[np.ndarray] = []

    def stat(member: np.ndarray) -> np.ndarray:
        seen.append(member.copy())
        return np.zeros(member.shape[0])

    ds.frame_permutation_pvalue(n_ref, n, stat, 99, np.random.default_rng(0))
    member = np.concatenate(seen)
    assert member.shape[1] == n and (member.sum(1) == n_ref).all()
    assert len({tuple(r) for r in member}) > 50  # really permuted
    boxes = data.box_mask(member)
    assert (boxes.reshape(len(member), n, 3).std(axis=2) == 0).all()  # the 3 boxes of a frame move together


def test_a_p_value_near_the_permutation_floor_is_refined_and_leaves_the_stream_alone() -> None:
    """A strong shift's p-value sits at 99 resamples' floor (0.01); refined from 9,999 fresh resamples it is
    1e-4, small enough to pass a correction. A p-value far from the floor is not refined (the same as without),
    and the caller's generator continues as without the refinement, so later tests draw the same resamples."""
    rng0 = np.random.default_rng(7)
    n_ref, n_cur = 60, 20
    frame = np.repeat(np.arange(n_ref + n_cur), 4)
    shifted = rng0.normal(size=frame.size) + np.where(frame >= n_ref, 3.0, 0.0)
    data = ds.Clustered(shifted, frame, n_ref, n_ref + n_cur)
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert ds.ks_clustered(data, 99, a)[1] == pytest.approx(0.01)
    assert ds.ks_clustered(data, 99, b, refine_to=9999)[1] == pytest.approx(1e-4)
    assert a.random() == b.random()  # the refinement drew from a spawned generator
    same = ds.Clustered((frame % n_cur) / n_cur + rng0.normal(scale=1e-3, size=frame.size), frame, n_ref,
                        n_ref + n_cur)  # the window's frames are the reference's, once more
    a, b = np.random.default_rng(2), np.random.default_rng(2)
    p, q = ds.ks_clustered(same, 99, a)[1], ds.ks_clustered(same, 99, b, refine_to=9999)[1]
    assert p > 0.11 and p == q  # more than 10 resamples as extreme: nothing to refine
    # at the threshold (10 resamples as extreme, p = 0.11 at 99) it is refined; above it, not
    calls: list[int] = []

    def stat(member: np.ndarray) -> np.ndarray:
        calls.append(member.shape[0])
        return np.zeros(member.shape[0])  # every resample ties the observed: p = 1, never refined

    ds.frame_permutation_pvalue(n_ref, n_ref + n_cur, stat, 99, np.random.default_rng(0), refine_to=9999)
    assert sum(calls) == 99 + 1
    for refine in (None, 99, 50):  # off, or not above the base: the base p-value
        assert ds.ks_clustered(data, 99, np.random.default_rng(1), refine_to=refine)[1] == pytest.approx(0.01)


def test_refined_p_values_stay_calibrated() -> None:
    """No drift: refining the small p-values keeps the rejection rate at small levels about the level (the
    refined p-value is valid below the refinement threshold)."""
    runs, hits = 300, 0
    for seed in range(runs):
        rng = np.random.default_rng(500 + seed)
        n_ref, n_cur = 40, 12
        frame = np.repeat(np.arange(n_ref + n_cur), 3)
        values = rng.normal(size=n_ref + n_cur)[frame] + rng.normal(scale=0.1, size=frame.size)
        hits += ds.ks_clustered(ds.Clustered(values, frame, n_ref, n_ref + n_cur), 99, rng, refine_to=999)[1] <= 0.05
    assert 0.02 < hits / runs < 0.09  # about 5 %: neither inflated nor deaf


def test_frame_permutation_p_values_stay_calibrated_when_boxes_of_a_frame_are_alike() -> None:
    """No drift, but the 8 boxes of a frame share its value: a box-level KS that treats boxes as independent
    rejects far too often; the p-value from permuting frames rejects at about its level."""
    naive, permuted = 0, 0
    runs = 60
    for seed in range(runs):
        rng = np.random.default_rng(100 + seed)
        n_ref, n_cur = 60, 20
        frame_value = rng.normal(size=n_ref + n_cur)
        frame = np.repeat(np.arange(n_ref + n_cur), 8)
        values = frame_value[frame] + rng.normal(scale=0.05, size=frame.size)
        ref, cur = values[frame < n_ref], values[frame >= n_ref]
        naive += ks_2samp(ref, cur).pvalue < 0.05
        permuted += ds.ks_clustered(ds.Clustered(values, frame, n_ref, n_ref + n_cur), 199, rng)[1] < 0.05
    assert naive / runs > 0.3
    assert permuted / runs < 0.15


def test_mmd_matches_the_hand_computed_u_statistic() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, 1.0, size=(4, 3))
    z = np.vstack([x, y])
    k, sigma = ds.rbf_kernel(z)
    dists = [np.linalg.norm(z[i] - z[j]) for i in range(9) for j in range(i + 1, 9)]
    assert sigma == pytest.approx(np.median(dists))

    def kern(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2)))

    xx = sum(kern(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(kern(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    xy = sum(kern(a, b) for a in x for b in y) / (5 * 4)
    member = np.array([[True] * 5 + [False] * 4])
    assert ds.mmd2_masks(k, member)[0] == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_mmd_test_finds_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(120, 16))
    _, p_same, _ = ds.mmd_test(ref, rng.normal(size=(40, 16)), 199, rng)
    _, p_shift, _ = ds.mmd_test(ref, rng.normal(0.6, 1.0, size=(40, 16)), 199, rng)
    assert p_same > 0.05 and p_shift <= 0.01
    _, p_sub, _ = ds.mmd_test(ref, rng.normal(0.6, 1.0, size=(40, 16)), 199, rng, max_frames=30)
    assert p_sub <= 0.05  # subsampled sides still see it


def test_corrections() -> None:
    p = [0.01, 0.04, 0.03, 0.2]
    assert ds.adjust_pvalues(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.8])
    assert ds.adjust_pvalues(p, "fdr") == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])  # by hand (BH)
    assert ds.adjust_pvalues(p, "fdr") == pytest.approx(false_discovery_control(p))
    # Holm by hand: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.2
    assert ds.adjust_pvalues(p, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert ds.adjust_pvalues([0.5, 0.6], "bonferroni") == pytest.approx([1.0, 1.0])
    assert ds.adjust_pvalues([], "fdr").size == 0


def test_the_directed_share_test_sees_a_class_grow_only_in_the_direction_asked_and_keeps_its_level() -> None:
    """One class's share, reference vs window, whole frames permuted: the observed statistic is the share
    difference; a grown class is small-p asked 'grew', large-p asked 'shrank'; with no change it rejects at about
    its level even when a frame's boxes are all of one class."""
    rng = np.random.default_rng(9)
    n_ref, n_cur = 120, 48
    k = rng.integers(1, 9, n_ref + n_cur)
    frame = np.repeat(np.arange(n_ref + n_cur), k)
    cls = rng.choice(5, frame.size, p=[0.3, 0.27, 0.22, 0.18, 0.03])
    cls = np.where((frame >= n_ref) & (rng.random(frame.size) < 0.06), 4, cls)  # ~3 % -> ~9 % stars in the window
    data = ds.Clustered(cls, frame, n_ref, n_ref + n_cur)
    diff, p_up = ds.share_shift_clustered(data, 4, 1, 999, rng, 9999)
    assert diff == pytest.approx(np.mean(cls[frame >= n_ref] == 4) - np.mean(cls[frame < n_ref] == 4))
    assert diff > 0 and p_up < 0.01
    assert ds.share_shift_clustered(data, 4, -1, 999, rng)[1] > 0.5
    rejected, runs = 0, 60
    for seed in range(runs):
        r = np.random.default_rng(200 + seed)
        fc = r.choice(5, n_ref + n_cur, p=[0.3, 0.27, 0.22, 0.18, 0.03])  # every box of a frame: its frame's class
        rejected += ds.share_shift_clustered(ds.Clustered(fc[frame], frame, n_ref, n_ref + n_cur), 0, 1, 199, r)[1] \
            < 0.05
    assert rejected / runs < 0.15

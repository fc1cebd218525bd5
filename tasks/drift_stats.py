"""Two-sample statistics of the drift monitor, as pure functions over numpy arrays.

scipy does the tests it has: ``ks_2samp`` (frame-level KS), ``wasserstein_distance``, ``chi2_contingency``,
``permutation_test`` (every resampled p-value) and ``false_discovery_control`` (Benjamini-Hochberg). Written
here only what no maintained library offers:

- PSI (population stability index) over reference-quantile bins;
- the KS and chi-squared statistics *vectorised over frame permutations*: boxes of one frame are not
  independent (one dark frame darkens all its boxes' confidences), so the p-values of box-level tests come
  from ``permutation_test`` reassigning **whole frames** between reference and window; the statistic of each
  resample is computed for a batch of resamples at once (the observed value equals scipy's, tested);
- MMD (maximum mean discrepancy, RBF kernel with the median-distance bandwidth) on embeddings, its p-value
  again from ``permutation_test`` over frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

PSI_PSEUDO = 0.5  # counts added to every bin before shares are taken: an empty bin stays finite
PSI_MIN_PER_BIN = 5  # window observations expected per bin at least (fewer bins for small windows)
Band = Literal["stable", "moderate", "significant"]


# --------------------------------------------------------------------------------------------
# PSI
# --------------------------------------------------------------------------------------------
def psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray, pseudo: float = PSI_PSEUDO) -> float:
    """PSI of two histograms over the same bins: ``sum((q - p) * ln(q / p))``.

    Shares are taken after adding ``pseudo`` to every bin's count, ``p_k = (r_k + a) / (R + a K)``: an empty
    bin stays finite and, for a small window, does not dominate (a floor such as 1e-4 makes one empty bin
    worth ~0.7 by itself). With hundreds of observations per side the value is the textbook one.

    Args:
        ref_counts, cur_counts: ``(K,)`` counts per bin (reference, window).

    Returns:
        PSI (>= 0). NaN when either side is empty.
    """
    r = np.asarray(ref_counts, np.float64)
    c = np.asarray(cur_counts, np.float64)
    if r.sum() <= 0 or c.sum() <= 0:
        return float("nan")
    p = (r + pseudo) / (r.sum() + pseudo * r.size)
    q = (c + pseudo) / (c.sum() + pseudo * c.size)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_bins_for(n_cur: int, bins: int) -> int:
    """Bins for a window of ``n_cur`` observations: ``bins``, fewer so that each expects ``PSI_MIN_PER_BIN``."""
    return int(max(2, min(bins, n_cur // PSI_MIN_PER_BIN)))


def quantile_edges(ref: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles ``1/bins .. (bins-1)/bins``, duplicates removed (ties)."""
    ref = np.asarray(ref, np.float64)
    if ref.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``x`` in the ``len(edges) + 1`` bins cut at ``edges`` (a value equal to an edge goes right)."""
    idx = np.searchsorted(edges, np.asarray(x, np.float64), side="right")
    return np.bincount(idx, minlength=len(edges) + 1)


def psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    """PSI of a continuous feature over ``bins`` reference-quantile bins (fewer when the reference has ties;
    callers pass :func:`psi_bins_for` the window's size)."""
    edges = quantile_edges(ref, bins)
    return psi_from_counts(bin_counts(ref, edges), bin_counts(cur, edges))


def psi_band(value: float, moderate: float = 0.1, significant: float = 0.2) -> Band:
    """``stable`` (< moderate), ``moderate`` (< significant) or ``significant``."""
    if not np.isfinite(value) or value < moderate:
        return "stable"
    return "moderate" if value < significant else "significant"


def psi_noise_floor(bins: int, n_ref: int, n_cur: int) -> float:
    """Expected PSI of two samples of ONE distribution (sampling noise alone): ``(bins - 1)(1/n_ref + 1/n_cur)``.

    PSI is approximately the chi-squared statistic over ``n_ref n_cur / (n_ref + n_cur)``; under no drift the
    statistic has mean ``bins - 1``. With 40 frames a day and 10 bins the floor is ~0.25: above the
    "significant" band by noise alone (hence :func:`psi_bins_for`: 8 bins at 40 frames, 4 at 24), and why PSI is
    an effect size here and not an alarm by default.
    """
    if n_ref <= 0 or n_cur <= 0:
        return float("nan")
    return (bins - 1) * (1.0 / n_ref + 1.0 / n_cur)


# --------------------------------------------------------------------------------------------
# Frame-level tests (frames are independent units): scipy
# --------------------------------------------------------------------------------------------
def ks_frames(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sample KS on frame-level values (``scipy.stats.ks_2samp``): ``(statistic, p-value)``."""
    from scipy.stats import ks_2samp

    r = ks_2samp(np.asarray(ref, np.float64), np.asarray(cur, np.float64))
    return float(r.statistic), float(r.pvalue)


def wasserstein(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """``(W1, W1 / std(ref))``: the distance in feature units and in reference standard deviations.

    The second is what a threshold can be set on independently of the feature's unit; NaN when the
    reference has no spread.
    """
    from scipy.stats import wasserstein_distance

    w = float(wasserstein_distance(np.asarray(ref, np.float64), np.asarray(cur, np.float64)))
    sd = float(np.std(ref))
    return w, (w / sd if sd > 0 else float("nan"))


def chi2_frames(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity of a 2 x K table of frame counts (frames independent): ``(stat, p)``.

    Categories empty on both sides are dropped; fewer than two categories left -> ``(0.0, 1.0)``.
    """
    from scipy.stats import chi2_contingency

    table = np.vstack([ref_counts, cur_counts]).astype(np.float64)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return 0.0, 1.0
    r = chi2_contingency(table, correction=False)
    return float(r.statistic), float(r.pvalue)


# --------------------------------------------------------------------------------------------
# Box-level tests: p-values by permuting whole frames
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clustered:
    """Box values grouped by frame, reference frames first.

    Attributes:
        values: ``(M,)`` one value per box (a confidence, a log area, a class id).
        frame: ``(M,)`` index of each box's frame in ``[0, n_frames)``.
        n_ref: frames ``0 .. n_ref-1`` are the reference, the rest the window.
        n_frames: all frames (frames without boxes count: they move between the sides too).
    """

    values: np.ndarray
    frame: np.ndarray
    n_ref: int
    n_frames: int

    @classmethod
    def of(cls, ref_values: np.ndarray, ref_frame: np.ndarray, n_ref: int, cur_values: np.ndarray,
           cur_frame: np.ndarray, n_cur: int) -> Clustered:
        """Join a reference and a window (each with frame indices local to itself)."""
        return cls(np.concatenate([ref_values, cur_values]),
                   np.concatenate([np.asarray(ref_frame, np.int64), np.asarray(cur_frame, np.int64) + n_ref]),
                   int(n_ref), int(n_ref + n_cur))

    def box_mask(self, member: np.ndarray) -> np.ndarray:
        """``(B, M)`` bool: boxes whose frame is on the reference side in each of ``B`` frame assignments."""
        return member[:, self.frame]

    def observed_member(self) -> np.ndarray:
        """``(1, n_frames)`` the actual assignment (reference frames True)."""
        m = np.zeros((1, self.n_frames), bool)
        m[0, : self.n_ref] = True
        return m


def ks_statistic_masks(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic ``sup |F_a - F_b|`` for each row of ``mask`` (True = sample a), vectorised.

    Ties are handled as ``scipy.stats.ks_2samp`` does: the empirical CDFs are compared at the end of each
    run of equal values.

    Args:
        values: ``(M,)`` pooled values.
        mask: ``(B, M)`` bool membership in sample a (the rest is sample b).

    Returns:
        ``(B,)`` statistics (0 where a side is empty).
    """
    order = np.argsort(values, kind="stable")
    v = values[order]
    ends = np.flatnonzero(np.r_[v[1:] != v[:-1], True])  # last index of each run of equal values
    m = mask[:, order]
    cum_a = np.cumsum(m, axis=1, dtype=np.int64)[:, ends]
    n_a = m.sum(axis=1, dtype=np.int64)
    n_b = values.size - n_a
    cum_b = (ends + 1)[None, :] - cum_a
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(cum_a / n_a[:, None] - cum_b / n_b[:, None]).max(axis=1)
    return np.where((n_a > 0) & (n_b > 0), d, 0.0)


def chi2_statistic_masks(classes: np.ndarray, n_classes: int, mask: np.ndarray) -> np.ndarray:
    """Chi-squared statistic of the 2 x C table (sample a vs b, class counts) for each row of ``mask``.

    Equal to ``scipy.stats.chi2_contingency(table, correction=False).statistic`` over the classes present.
    """
    onehot = np.zeros((classes.size, n_classes), np.float64)
    onehot[np.arange(classes.size), classes.astype(np.int64)] = 1.0
    total = onehot.sum(0)
    keep = total > 0
    a = mask.astype(np.float64) @ onehot[:, keep]  # (B, C')
    b = total[keep][None, :] - a
    n = total.sum()
    na, nb = a.sum(1, keepdims=True), b.sum(1, keepdims=True)
    col = total[keep][None, :]
    ea, eb = na * col / n, nb * col / n
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.nansum((a - ea) ** 2 / ea, axis=1) + np.nansum((b - eb) ** 2 / eb, axis=1)
    return np.where((na[:, 0] > 0) & (nb[:, 0] > 0), stat, 0.0)


REFINE_EXCEEDANCES = 10  # a p-value resting on fewer resamples as extreme as the observed is refined


def frame_permutation_pvalue(n_ref: int, n_frames: int, statistic: Callable[[np.ndarray], np.ndarray],
                             n_resamples: int, rng: np.random.Generator, batch: int = 200,
                             refine_to: int | None = None) -> float:
    """p-value of a statistic (larger = more different) under random reassignment of whole frames.

    ``scipy.stats.permutation_test`` draws the assignments (independent samples of frame indices: the
    reference keeps ``n_ref`` frames, the window the rest); ``statistic`` gets ``(B, n_frames)`` bool
    membership masks (True = reference side) and returns ``(B,)`` values. With fewer distinct assignments
    than ``n_resamples`` the test is exact. The smallest possible p-value is ``1 / (n_resamples + 1)``.

    ``refine_to``: when fewer than :data:`REFINE_EXCEEDANCES` resamples were as extreme as the observed
    (``p <= REFINE_EXCEEDANCES / (n_resamples + 1)``), the p-value is computed again from ``refine_to`` fresh
    resamples (a generator spawned from ``rng``, so ``rng``'s own stream, and every later test, is as without
    it). A coarse p-value near the floor cannot pass a multiple-testing correction even when the drift is strong
    (13 tests, FDR, alpha 0.01 need two p-values of at most 0.0015); only the small p-values pay for more
    resamples. The refined p-value is still valid at every level below the refinement threshold: a p-value that
    is not refined is above it.
    """
    p = _permutation_pvalue(n_ref, n_frames, statistic, n_resamples, rng, batch)
    if refine_to is None or refine_to <= n_resamples or p * (n_resamples + 1) > REFINE_EXCEEDANCES + 1e-9:
        return p
    return _permutation_pvalue(n_ref, n_frames, statistic, refine_to, rng.spawn(1)[0], batch)


def _permutation_pvalue(n_ref: int, n_frames: int, statistic: Callable[[np.ndarray], np.ndarray],
                        n_resamples: int, rng: np.random.Generator, batch: int) -> float:
    from scipy.stats import permutation_test

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        x2 = np.atleast_2d(x)
        member = np.zeros((x2.shape[0], n_frames), bool)
        np.put_along_axis(member, x2, True, axis=1)
        out = statistic(member)
        return out if x.ndim > 1 else out[0]

    res = permutation_test((np.arange(n_ref), np.arange(n_ref, n_frames)), stat, vectorized=True,
                           n_resamples=n_resamples, alternative="greater", batch=batch, rng=rng)
    return float(res.pvalue)


def ks_clustered(data: Clustered, n_resamples: int, rng: np.random.Generator,
                 refine_to: int | None = None) -> tuple[float, float]:
    """KS between reference and window boxes: ``(scipy's ks_2samp statistic, frame-permutation p-value)``
    (``refine_to``: :func:`frame_permutation_pvalue`)."""
    from scipy.stats import ks_2samp

    ref = data.values[data.frame < data.n_ref]
    cur = data.values[data.frame >= data.n_ref]
    d = float(ks_2samp(ref, cur).statistic)
    p = frame_permutation_pvalue(data.n_ref, data.n_frames,
                                 lambda member: ks_statistic_masks(data.values, data.box_mask(member)),
                                 n_resamples, rng, refine_to=refine_to)
    return d, p


def chi2_clustered(data: Clustered, n_classes: int, n_resamples: int,
                   rng: np.random.Generator, refine_to: int | None = None) -> tuple[float, float]:
    """Class mix (box classes) reference vs window: ``(scipy's chi-squared statistic, frame-permutation p)``.

    The statistic is ``chi2_contingency(correction=False)`` of the 2 x C table; its asymptotic p-value
    assumes independent boxes and is not used.
    """
    ref = np.bincount(data.values[data.frame < data.n_ref].astype(np.int64), minlength=n_classes)
    cur = np.bincount(data.values[data.frame >= data.n_ref].astype(np.int64), minlength=n_classes)
    stat, _ = chi2_frames(ref, cur)
    p = frame_permutation_pvalue(
        data.n_ref, data.n_frames,
        lambda member: chi2_statistic_masks(data.values, n_classes, data.box_mask(member)), n_resamples, rng,
        refine_to=refine_to)
    return stat, p


def share_shift_statistic_masks(member_of_class: np.ndarray, mask: np.ndarray, direction: int) -> np.ndarray:
    """``direction * (share of the class in sample b - its share in sample a)`` for each row of ``mask``
    (True = sample a, the reference side; ``member_of_class``: ``(M,)`` bool, the box is of the class); 0 where a
    side has no box. Larger = more of the shift ``direction`` names (+1: the class grew in b, -1: it shrank)."""
    m = mask.astype(np.float64)
    k = member_of_class.astype(np.float64)
    na, nb = m.sum(1), (1.0 - m).sum(1)
    ka = m @ k
    kb = k.sum() - ka
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = kb / nb - ka / na
    return np.where((na > 0) & (nb > 0), direction * diff, 0.0)


def share_shift_clustered(data: Clustered, class_id: int, direction: int, n_resamples: int,
                          rng: np.random.Generator, refine_to: int | None = None) -> tuple[float, float]:
    """One-sided test that class ``class_id``'s share of the boxes moved in ``direction`` (+1 grew, -1 shrank) from
    the reference to the window: ``(window share - reference share, frame-permutation p-value)``.

    A directed one-class test has more power than the class-mix chi-squared when the question is already
    known (the same class grew on other cameras: :func:`tasks.drift.companions`).
    """
    member = data.values.astype(np.int64) == int(class_id)
    observed = share_shift_statistic_masks(member, data.box_mask(data.observed_member()), 1)[0]
    p = frame_permutation_pvalue(
        data.n_ref, data.n_frames,
        lambda m: share_shift_statistic_masks(member, data.box_mask(m), direction), n_resamples, rng,
        refine_to=refine_to)
    return float(observed), p


# --------------------------------------------------------------------------------------------
# MMD on embeddings
# --------------------------------------------------------------------------------------------
def rbf_kernel(z: np.ndarray, bandwidth: float | None = None) -> tuple[np.ndarray, float]:
    """``(K, sigma)``: the RBF Gram matrix ``exp(-|zi - zj|^2 / (2 sigma^2))`` of ``z (n, D)``.

    ``sigma`` defaults to the median pairwise distance (the median heuristic), computed on the pooled
    sample, so it does not change under permutation.
    """
    z = np.asarray(z, np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    if bandwidth is None:
        iu = np.triu_indices(len(z), k=1)
        med = float(np.median(np.sqrt(d2[iu]))) if iu[0].size else 1.0
        bandwidth = med if med > 0 else 1.0
    return np.exp(-d2 / (2.0 * bandwidth * bandwidth)), float(bandwidth)


def mmd2_masks(k: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 between the rows of ``member`` (True = sample x) and the rest, for a Gram matrix ``k``.

    ``MMD^2_u = sum_{i!=j} k(xi,xj) / (m(m-1)) + sum_{i!=j} k(yi,yj) / (n(n-1)) - 2 sum k(xi,yj) / (mn)``.

    Args:
        k: ``(N, N)`` symmetric kernel matrix.
        member: ``(B, N)`` bool.

    Returns:
        ``(B,)`` values (can be slightly negative when the samples agree).
    """
    k0 = k - np.diag(np.diag(k))  # the U-statistic leaves out i == j
    a = member.astype(np.float64)
    b = 1.0 - a
    m, n = a.sum(1), b.sum(1)
    ak = a @ k0
    sxx = np.sum(ak * a, axis=1)
    sxy = np.sum(ak * b, axis=1)
    syy = k0.sum() - sxx - 2.0 * sxy
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
    return np.where((m > 1) & (n > 1), out, 0.0)


def mmd_test(ref: np.ndarray, cur: np.ndarray, n_resamples: int, rng: np.random.Generator,
             max_frames: int | None = None, refine_to: int | None = None) -> tuple[float, float, float]:
    """MMD between reference and window embeddings with a permutation test over frames.

    Args:
        ref, cur: ``(n, D)`` and ``(m, D)`` one embedding per frame.
        max_frames: each side larger than this is subsampled (without replacement) to bound the
            ``O((n+m)^2)`` kernel.

    Returns:
        ``(MMD^2_u, p-value, bandwidth)``.
    """
    ref = np.asarray(ref, np.float64)
    cur = np.asarray(cur, np.float64)
    if max_frames is not None:
        if len(ref) > max_frames:
            ref = ref[np.sort(rng.choice(len(ref), max_frames, replace=False))]
        if len(cur) > max_frames:
            cur = cur[np.sort(rng.choice(len(cur), max_frames, replace=False))]
    k, sigma = rbf_kernel(np.vstack([ref, cur]))
    n_ref, n = len(ref), len(ref) + len(cur)
    member = np.zeros((1, n), bool)
    member[0, :n_ref] = True
    observed = float(mmd2_masks(k, member)[0])
    p = frame_permutation_pvalue(n_ref, n, lambda mm: mmd2_masks(k, mm), n_resamples, rng, refine_to=refine_to)
    return observed, p, sigma


# --------------------------------------------------------------------------------------------
# Multiple testing
# --------------------------------------------------------------------------------------------
def adjust_pvalues(pvalues: Sequence[float], method: Literal["bonferroni", "holm", "fdr"]) -> np.ndarray:
    """Adjusted p-values of one family: Bonferroni (``min(1, m p)``), Holm's step-down (the i-th smallest
    times ``m - i + 1``, made monotone; controls the family-wise error like Bonferroni, never less powerful) or
    Benjamini-Hochberg (``scipy.stats.false_discovery_control``). Compare them with the level (alpha / FDR)."""
    p = np.asarray(list(pvalues), np.float64)
    if p.size == 0:
        return p
    if method == "bonferroni":
        return np.minimum(1.0, p * p.size)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        steps = np.minimum(1.0, np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))))
        out = np.empty_like(p)
        out[order] = steps
        return out
    from scipy.stats import false_discovery_control

    return np.asarray(false_discovery_control(p, method="bh"), np.float64)

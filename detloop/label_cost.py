"""Labelling cost in seconds: what a labeller pays to turn a frame's pre-annotations into its final boxes.

Labellers correct the champion's pre-annotations rather than draw from nothing. For one frame the
actions are counted by matching the pre-annotations to the final boxes (greedy, highest IoU first, one
to one):

- **verify**: a pre-annotation matches a final box of the same class at IoU >= ``verify_iou``;
- **adjust**: it matches at IoU in ``[match_iou, verify_iou)``, or at IoU >= ``match_iou`` with another class;
- **delete**: a pre-annotation matching no final box (a false positive);
- **draw**: a final box no pre-annotation matches (a miss).

Seconds = ``frame_seconds`` + the count of each action x its price (:class:`LabellingCostSettings`).
The default prices come from published timing studies (docs/selection.md): verification 1.6 s per box
(Papadopoulos et al., CVPR 2016), drawing 7 s with extreme clicking (Papadopoulos et al., ICCV 2017; 25-35 s
the classic way).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.ops import box_iou
from detloop.settings import LabellingCostSettings


@dataclass(frozen=True)
class LabelActions:
    """Counts of a labeller's actions on one or more frames."""

    frames: int = 0
    verify: int = 0
    adjust: int = 0
    draw: int = 0
    delete: int = 0

    def __add__(self, other: LabelActions) -> LabelActions:
        return LabelActions(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def seconds(self, cost: LabellingCostSettings) -> float:
        """Labelling seconds of these actions at ``cost``'s prices."""
        return float(self.frames * cost.frame_seconds + self.verify * cost.verify_seconds
                     + self.adjust * cost.adjust_seconds + self.draw * cost.draw_seconds
                     + self.delete * cost.delete_seconds)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def astuple(a: LabelActions) -> tuple[int, int, int, int, int]:
    return (a.frames, a.verify, a.adjust, a.draw, a.delete)


VERIFY, ADJUST, DELETE = 0, 1, 2  # a pre-annotation's outcome (codes of :func:`match_outcomes`)
OUTCOME_BINS = 10  # confidence bins of the outcome ledger: [0, 0.1), [0.1, 0.2) ... [0.9, 1]


def match_outcomes(pre: Detections, final: Detections, cost: LabellingCostSettings) -> tuple[np.ndarray, np.ndarray]:
    """Each pre-annotation's outcome and which final boxes it explains (greedy one-to-one by IoU, highest first,
    among pairs with IoU >= ``match_iou``, any class).

    Returns:
        ``(P,)`` int8 codes (:data:`VERIFY`, :data:`ADJUST`, :data:`DELETE`) and ``(N,)`` bool: final box matched
        by a pre-annotation (the unmatched ones are drawn).
    """
    n_pre, n_fin = len(pre), len(final)
    outcome = np.full(n_pre, DELETE, np.int8)
    used_f = np.zeros(n_fin, bool)
    if n_pre == 0 or n_fin == 0:
        return outcome, used_f
    iou = box_iou(pre.xyxy, final.xyxy)  # (P, N)
    pi, fi = np.nonzero(iou >= cost.match_iou)
    order = np.argsort(-iou[pi, fi], kind="stable")
    used_p = np.zeros(n_pre, bool)
    for k in order:
        p, f = int(pi[k]), int(fi[k])
        if used_p[p] or used_f[f]:
            continue
        used_p[p] = used_f[f] = True
        same = iou[p, f] >= cost.verify_iou and int(pre.class_id[p]) == int(final.class_id[f])
        outcome[p] = VERIFY if same else ADJUST
    return outcome, used_f


def count_actions(pre: Detections, final: Detections, cost: LabellingCostSettings) -> LabelActions:
    """The actions that turn ``pre`` (pre-annotations, ``(P, 4)``) into ``final`` (``(N, 4)``), same frame pixels.

    Greedy one-to-one matching by IoU, highest first, among pairs with IoU >= ``match_iou`` (any class).
    """
    outcome, matched = match_outcomes(pre, final, cost)
    return LabelActions(frames=1, verify=int((outcome == VERIFY).sum()), adjust=int((outcome == ADJUST).sum()),
                        draw=int((~matched).sum()), delete=int((outcome == DELETE).sum()))


def confidence_bin(confidence: np.ndarray) -> np.ndarray:
    """The ledger's bin of each confidence (:data:`OUTCOME_BINS` equal bins over [0, 1])."""
    c = np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
    # + 1e-6: a float32 0.9 (0.8999999761...) belongs to [0.9, 1], as it reads
    return np.minimum((c * OUTCOME_BINS + 1e-6).astype(np.int64), OUTCOME_BINS - 1)


@dataclass
class OutcomeTally:
    """What labellers did with the champion's boxes, by confidence bin: the ledger expected seconds are fitted on.

    ``shown[b]``: pre-annotations of bin ``b`` verified / adjusted / deleted. ``candidates[b]``: sub-threshold
    boxes (not shown) of bin ``b`` that became a drawn box / did not. ``draws_unexplained``: drawn boxes no
    candidate explains, over the ``frames_with_candidates`` frames whose candidates were recorded.
    """

    frames: int = 0
    shown: np.ndarray = field(default_factory=lambda: np.zeros((OUTCOME_BINS, 3), np.int64))
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((OUTCOME_BINS, 2), np.int64))
    frames_with_candidates: int = 0
    draws_unexplained: int = 0

    def __add__(self, other: OutcomeTally) -> OutcomeTally:
        return OutcomeTally(self.frames + other.frames, self.shown + other.shown, self.candidates + other.candidates,
                            self.frames_with_candidates + other.frames_with_candidates,
                            self.draws_unexplained + other.draws_unexplained)

    def add_frame(self, shown: Detections, final: Detections, cost: LabellingCostSettings,
                  candidates: Detections | None = None) -> None:
        """Record one labelled frame: ``shown`` the pre-annotations, ``final`` the labels, ``candidates`` the
        sub-threshold boxes the labeller did not see (None: not recorded)."""
        outcome, matched = match_outcomes(shown, final, cost)
        np.add.at(self.shown, (confidence_bin(shown.confidence), outcome.astype(np.int64)), 1)
        self.frames += 1
        if candidates is None:
            return
        cand_out, explained = match_outcomes(candidates, final[~matched], cost)
        found = (cand_out != DELETE).astype(np.int64)  # a candidate matching a drawn box at any class
        np.add.at(self.candidates, (confidence_bin(candidates.confidence), 1 - found), 1)
        self.frames_with_candidates += 1
        self.draws_unexplained += int((~explained).sum())

    def to_dict(self) -> dict[str, Any]:
        return {"bins": OUTCOME_BINS, "frames": self.frames, "shown": self.shown.tolist(),
                "candidates": self.candidates.tolist(), "frames_with_candidates": self.frames_with_candidates,
                "draws_unexplained": self.draws_unexplained}

    def summary(self) -> dict[str, Any]:
        """For people: shares of the shown boxes verified / adjusted / deleted, per non-empty bin
        ``"lo-hi": "verified/adjusted/deleted"``, candidates found, and unhinted draws per frame."""
        n = int(self.shown.sum())
        share = (self.shown.sum(0) / max(n, 1)).round(3).tolist()
        bins = {f"{b / OUTCOME_BINS:.1f}-{(b + 1) / OUTCOME_BINS:.1f}": "/".join(map(str, self.shown[b].tolist()))
                for b in range(OUTCOME_BINS) if self.shown[b].any()}
        out: dict[str, Any] = {"frames": self.frames, "shown_boxes": n, "verified": share[0], "adjusted": share[1],
                               "deleted": share[2], "by_confidence (verified/adjusted/deleted)": bins}
        if self.frames_with_candidates:
            out["candidates_found"] = f"{int(self.candidates[:, 0].sum())} of {int(self.candidates.sum())}"
            out["unhinted_draws_per_frame"] = round(self.draws_unexplained / self.frames_with_candidates, 3)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutcomeTally:
        """Read :meth:`to_dict`'s output.

        Raises:
            ValueError: when it was recorded with another number of bins.
        """
        if int(d.get("bins", OUTCOME_BINS)) != OUTCOME_BINS:
            raise ValueError(f"outcome tally has {d.get('bins')} bins, expected {OUTCOME_BINS}")
        return cls(int(d["frames"]), np.asarray(d["shown"], np.int64).reshape(OUTCOME_BINS, 3),
                   np.asarray(d["candidates"], np.int64).reshape(OUTCOME_BINS, 2),
                   int(d.get("frames_with_candidates", 0)), int(d.get("draws_unexplained", 0)))


@dataclass(frozen=True)
class OutcomeRates:
    """Outcome probabilities by confidence bin, fitted on an :class:`OutcomeTally` (:func:`fit_outcome_rates`).

    ``shown[b]``: P(verify, adjust, delete) of a pre-annotation in bin ``b``; ``found[b]``: P(a sub-threshold
    candidate in bin ``b`` is a missed object, drawn); ``extra_draws``: drawn boxes per frame no candidate hints at.
    """

    shown: np.ndarray
    found: np.ndarray
    extra_draws: float
    boxes: int
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return {"shown": np.round(self.shown, 3).tolist(), "found": np.round(self.found, 3).tolist(),
                "extra_draws": round(self.extra_draws, 3), "boxes": self.boxes, "frames": self.frames}


def fit_outcome_rates(tally: OutcomeTally, prior_boxes: float) -> OutcomeRates:
    """Posterior-mean outcome rates per bin, shrunk toward the uncalibrated model (a box of confidence ``c`` is
    verified with probability ``c`` and deleted otherwise; a candidate is found with probability ``c``; no draw
    beyond the candidates) with the weight of ``prior_boxes`` observations per bin (a Dirichlet / beta prior).
    An empty tally gives the uncalibrated model back, at the bins' centres."""
    c = (np.arange(OUTCOME_BINS) + 0.5) / OUTCOME_BINS
    model_shown = np.stack([c, np.zeros_like(c), 1.0 - c], axis=1)
    model_found = np.stack([c, 1.0 - c], axis=1)
    shown = tally.shown + prior_boxes * model_shown
    found = tally.candidates + prior_boxes * model_found
    n_shown, n_found = shown.sum(1, keepdims=True), found.sum(1, keepdims=True)
    shown_p = np.where(n_shown > 0, shown / np.maximum(n_shown, 1e-12), model_shown)  # an empty bin: the model
    found_p = np.where(n_found > 0, found / np.maximum(n_found, 1e-12), model_found)[:, 0]
    extra = tally.draws_unexplained / tally.frames_with_candidates if tally.frames_with_candidates else 0.0
    return OutcomeRates(shown_p, found_p, float(extra), int(tally.shown.sum()), tally.frames)


def expected_seconds(confidence: np.ndarray, frame_index: np.ndarray, candidate_confidence: np.ndarray,
                     candidate_frame_index: np.ndarray, n_frames: int, cost: LabellingCostSettings,
                     rates: OutcomeRates | None = None) -> np.ndarray:
    """Expected labelling seconds of each frame from the champion's boxes.

    Uncalibrated (``rates`` None), confidences are taken as probabilities: a pre-annotation (a box shown to the
    labeller) with confidence ``p`` is a real object with probability ``p`` (verified) and a false positive
    otherwise (deleted); a sub-threshold candidate with confidence ``q`` (not shown) is a missed object with
    probability ``q`` (drawn); localisation errors are not predicted. Calibrated (``rates`` fitted on what
    labellers did with earlier rounds' boxes), a shown box costs its bin's verify / adjust / delete rates x
    their prices, a candidate its bin's found rate x the draw price, and each frame ``extra_draws`` draws.
    An estimate, for ranking, not a bill.

    Args:
        confidence, frame_index: ``(M,)`` pre-annotations' confidences and frames.
        candidate_confidence, candidate_frame_index: ``(K,)`` sub-threshold candidates' confidences and frames.
        n_frames: F.
        cost: the prices.

    Returns:
        ``(F,)`` float64 seconds, each >= ``frame_seconds``.
    """
    p = np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
    q = np.clip(np.asarray(candidate_confidence, np.float64), 0.0, 1.0)
    out = np.full(n_frames, cost.frame_seconds, np.float64)
    if rates is None:
        shown = p * cost.verify_seconds + (1.0 - p) * cost.delete_seconds
        found = q
    else:
        prices = np.array([cost.verify_seconds, cost.adjust_seconds, cost.delete_seconds])
        shown = (rates.shown @ prices)[confidence_bin(p)]
        found = rates.found[confidence_bin(q)]
        out += rates.extra_draws * cost.draw_seconds
    out += np.bincount(np.asarray(frame_index, np.int64), weights=shown, minlength=n_frames)
    out += np.bincount(np.asarray(candidate_frame_index, np.int64), weights=found * cost.draw_seconds,
                       minlength=n_frames)
    return out

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

from dataclasses import asdict, dataclass

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


def count_actions(pre: Detections, final: Detections, cost: LabellingCostSettings) -> LabelActions:
    """The actions that turn ``pre`` (pre-annotations, ``(P, 4)``) into ``final`` (``(N, 4)``), same frame pixels.

    Greedy one-to-one matching by IoU, highest first, among pairs with IoU >= ``match_iou`` (any class).
    """
    n_pre, n_fin = len(pre), len(final)
    if n_pre == 0 or n_fin == 0:
        return LabelActions(frames=1, draw=n_fin, delete=n_pre)
    iou = box_iou(pre.xyxy, final.xyxy)  # (P, N)
    pi, fi = np.nonzero(iou >= cost.match_iou)
    order = np.argsort(-iou[pi, fi], kind="stable")
    used_p = np.zeros(n_pre, bool)
    used_f = np.zeros(n_fin, bool)
    verify = adjust = 0
    for k in order:
        p, f = int(pi[k]), int(fi[k])
        if used_p[p] or used_f[f]:
            continue
        used_p[p] = used_f[f] = True
        if iou[p, f] >= cost.verify_iou and int(pre.class_id[p]) == int(final.class_id[f]):
            verify += 1
        else:
            adjust += 1
    return LabelActions(frames=1, verify=verify, adjust=adjust, draw=int((~used_f).sum()),
                        delete=int((~used_p).sum()))


def expected_seconds(confidence: np.ndarray, frame_index: np.ndarray, candidate_confidence: np.ndarray,
                     candidate_frame_index: np.ndarray, n_frames: int, cost: LabellingCostSettings) -> np.ndarray:
    """Expected labelling seconds of each frame from the champion's boxes, taking confidences as probabilities.

    A pre-annotation (a box shown to the labeller) with confidence ``p`` is a real object with probability
    ``p`` (verified) and a false positive otherwise (deleted); a sub-threshold candidate with confidence ``q``
    (not shown) is a missed object with probability ``q`` (drawn). Localisation errors are not predicted:
    an estimate, for ranking, not a bill.

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
    shown = p * cost.verify_seconds + (1.0 - p) * cost.delete_seconds
    out = np.full(n_frames, cost.frame_seconds, np.float64)
    out += np.bincount(np.asarray(frame_index, np.int64), weights=shown, minlength=n_frames)
    out += np.bincount(np.asarray(candidate_frame_index, np.int64), weights=q * cost.draw_seconds,
                       minlength=n_frames)
    return out

"""Self-training (issue 22, ``selection.pseudo_labels``): confident boxes on unlabelled frames as free labels.

A frame the champion has scored but nobody labels can still teach the next fine-tune, if the champion's boxes on it
can be trusted. Two ways this goes wrong, and the rule against each:

- **A wrong label is learned as truth.** Only boxes at or above ``min_conf`` become labels, and only from a champion
  that is not weak (mAP50 on frames it never trained on above ``regime.weak_below``, the rule the regime blend and
  the rare-class search use; unknown quality stands down too).
- **A missed object is learned as background.** Everything on a pseudo-labelled frame that is not a label is
  background to the trainer. A frame qualifies only when every box the champion sees is confident (a label) or faint
  (below ``ignore_below``); one box in between (an object the champion cannot vouch for) disqualifies the frame. A
  frame with no confident box teaches nothing but background and does not qualify either.

Of the qualifying frames a seeded sample of ``per_budget x budget`` trains one fine-tune; they are not paid, not
evaluated on and not kept in a dataset version. Pure functions over :class:`detloop.detections.Detections`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.settings import PseudoLabelSettings


def frame_pseudo_labels(dets: Detections, settings: PseudoLabelSettings) -> Detections | None:
    """The frame's confident boxes as labels, or None when the frame does not qualify (a box in
    ``[ignore_below, min_conf)``, or no confident box)."""
    conf = np.asarray(dets.confidence, np.float32)  # thresholds in the scores' precision: 0.7 is a label
    lo, hi = np.float32(settings.ignore_below), np.float32(settings.min_conf)
    doubtful = (conf >= lo) & (conf < hi)
    sure = conf >= hi
    if doubtful.any() or not sure.any():
        return None
    return dets[sure]


@dataclass
class PseudoLabels:
    """The frames a round pseudo-labels (indices into the candidates, in pick order) and why."""

    indices: list[int] = field(default_factory=list)
    labels: list[Detections] = field(default_factory=list)
    qualifying: int = 0
    candidates: int = 0
    stood_down: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"frames": len(self.indices), "boxes": int(sum(len(d) for d in self.labels)),
                "qualifying": self.qualifying, "candidates": self.candidates, "stood_down": self.stood_down}


def pseudo_label(candidates: Sequence[Detections], settings: PseudoLabelSettings, quality: float | None,
                 weak_below: float, budget: int, seed: int) -> PseudoLabels:
    """Pseudo-labels for a round from the champion's detections on its unlabelled ``candidates``.

    Args:
        candidates: the champion's detections on frames nobody labels this round.
        settings: ``selection.pseudo_labels``.
        quality: the champion's mAP50 on frames it never trained on (None: unknown).
        weak_below: ``selection.regime.weak_below``; at or below it the champion's boxes are not trusted.
        budget: the round's labelling budget; at most ``round(per_budget x budget)`` frames are taken.
        seed: seed of the sample among qualifying frames (the round's seed: reproducible).
    """
    n = len(candidates)
    if quality is None or not np.isfinite(quality):
        return PseudoLabels(candidates=n, stood_down="champion quality unknown: its boxes are not trusted as labels")
    if quality <= weak_below:
        return PseudoLabels(candidates=n, stood_down=f"champion is weak (mAP50 {quality:.3f} <= {weak_below:g}): "
                                                      "its boxes are not trusted as labels")
    labelled = [(i, lab) for i, d in enumerate(candidates) if (lab := frame_pseudo_labels(d, settings)) is not None]
    limit = max(0, round(settings.per_budget * budget))
    order = np.random.default_rng(seed).permutation(len(labelled))[:limit]
    picked = [labelled[k] for k in order]
    return PseudoLabels([i for i, _ in picked], [lab for _, lab in picked], len(labelled), n)

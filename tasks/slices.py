"""Evaluation slices built from dataset versions.

The gate compares challenger and champion on the same slices in the same run:

- ``golden``: the frozen, versioned golden set (never trained on).
- ``round``: frames of the newest labelled round that went to ``val`` (recent distribution; its
  ``train`` frames are left out: the challenger was trained on them).
- ``control``: the control-arm frames (uniform random, never trained on) of this round and, with
  ``selection.control_pool_rounds`` N > 1, of the N - 1 rounds before it: an unbiased estimate of
  accuracy on live traffic (pooled rounds trade recency for a smaller control share per round).
- ``crowded``: golden frames whose ground truth has overlapping boxes (max pairwise IoU >= 0.3).
- ``drifted`` (drift rounds only): the frames of the ``round`` and ``control`` slices from the episode's cameras,
  captured on or after its first drifted day: what the frozen golden set, older than the drift, cannot show
  (:class:`DriftFocus`; the gate's drift allowance reads it, ``gate.drift_golden_tol``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.ops import box_iou
from detloop.settings import Settings
from tasks.evaluation import EvalItem, EvalSlice

CROWD_IOU = 0.3


def items_from_version(
    store: Any, settings: Settings, version_id: str, split: str, source: str | Collection[str] | None = None,
    manifest: Any | None = None, frames: Collection[str] | None = None,
) -> list[EvalItem]:
    """Materialize one split of a version and read its items (camera from the manifest).

    Args:
        split: ``golden`` | ``val`` | ``control`` | ``train``.
        source: keep only entries from this source (e.g. ``round:<id>``) or these sources.
        manifest: the version's manifest when the caller has already read it (else it is read here).
        frames: keep only these frames (``frame_sha``).
    """
    from detloop import datasets as ds

    manifest = manifest or ds.load_manifest(store, settings, version_id)
    keep = None if source is None else {source} if isinstance(source, str) else set(source)
    entries = [e for e in manifest.by_split(split) if (keep is None or e.source in keep)
               and (frames is None or e.frame_sha in frames)]
    if not entries:
        return []
    data_yaml = ds.materialize(store, settings, version_id, splits=(split,))
    root = Path(data_yaml).parent
    items = []
    for e in entries:
        img = root / "images" / split / f"{e.frame_sha}.{e.ext}"
        lbl = root / "labels" / split / f"{e.frame_sha}.txt"
        text = lbl.read_text() if lbl.is_file() else ""
        gt = Detections.from_yolo_txt(text, e.width, e.height, num_classes=len(settings.classes))
        items.append(EvalItem(image=str(img), gt=gt, camera=e.camera))
    return items


def is_crowded(gt: Detections, iou: float = CROWD_IOU) -> bool:
    """True when two ground-truth boxes overlap by at least ``iou``."""
    if len(gt) < 2:
        return False
    m = box_iou(gt.xyxy, gt.xyxy)
    np.fill_diagonal(m, 0.0)
    return bool(m.max() >= iou)


def control_sources(entries: Sequence[Any], current: str, rounds: int) -> list[str]:
    """Sources (``round:<id>``) of the control slice: ``current`` and the ``rounds - 1`` rounds before it.

    Rounds are ordered by the newest capture date among their control entries (then by id), so the
    order does not depend on how round ids are spelled; rounds after ``current`` are never included.
    """
    newest: dict[str, str] = {}
    for e in entries:
        if e.source.startswith("round:"):
            newest[e.source] = max(newest.get(e.source, ""), e.date)
    newest.setdefault(current, max(newest.values(), default=""))
    order = sorted(newest, key=lambda s: (newest[s], s))
    upto = order[: order.index(current) + 1]
    return upto[-max(1, rounds):]


@dataclass(frozen=True)
class DriftFocus:
    """What a drift round was opened for: the episode's cameras and its first drifted day (ISO)."""

    episode_id: str
    cameras: tuple[str, ...]
    since: str


def drift_focus(store: Any, settings: Settings, round_id: str | None) -> DriftFocus | None:
    """The drift focus of round ``round_id`` (None: a weekly round, or its episode record is gone)."""
    from tasks.drift_records import load_episode
    from tasks.rounds import load_round

    rec = load_round(store, settings, round_id) if round_id else None
    if rec is None or rec.reason != "drift" or not rec.focus_key:
        return None
    ep = load_episode(store, settings, rec.focus_key)
    if ep is None or not ep.cameras:
        return None
    return DriftFocus(ep.episode_id, tuple(sorted(ep.cameras)), min(ep.days) if ep.days else ep.opened_on)


def drifted_entries(entries: Sequence[Any], focus: DriftFocus) -> list[Any]:
    """The entries captured by the focus's cameras on or after its first drifted day."""
    return [e for e in entries if e.camera in focus.cameras and e.date >= focus.since]


def build_slices(
    store: Any,
    settings: Settings,
    golden_version: str,
    round_version: str | None = None,
    round_id: str | None = None,
    focus: DriftFocus | None = None,
) -> list[EvalSlice]:
    """The gate's slices; ``golden`` first (latency and thresholds are measured on it). ``focus``: the drift
    round's (:func:`drift_focus`), which adds the ``drifted`` slice."""
    golden = items_from_version(store, settings, golden_version, "golden")
    slices = [EvalSlice("golden", golden)]
    crowded = [it for it in golden if is_crowded(it.gt)]
    if crowded:
        slices.append(EvalSlice("crowded", crowded))
    if round_version and round_id:
        from detloop import datasets as ds

        manifest = ds.load_manifest(store, settings, round_version)  # read and verified once for both slices
        src = f"round:{round_id}"
        rnd = items_from_version(store, settings, round_version, "val", source=src, manifest=manifest)
        if rnd:
            slices.append(EvalSlice("round", rnd))
        sources = control_sources(manifest.by_split("control"), src, settings.selection.control_pool_rounds)
        ctl = items_from_version(store, settings, round_version, "control", source=sources, manifest=manifest)
        if ctl:
            slices.append(EvalSlice("control", ctl))
        if focus is not None:  # of the round and control slices (never a frame the challenger trained on)
            keep = {e.frame_sha for e in drifted_entries(manifest.entries, focus)}
            drifted = [it for it in (*rnd, *ctl) if Path(it.image).stem in keep]  # images are <frame_sha>.<ext>
            if drifted:
                slices.append(EvalSlice("drifted", drifted))
    return slices


def slice_summary(slices: Sequence[EvalSlice]) -> list[dict[str, Any]]:
    return [{"slice": s.name, "frames": len(s.items), "instances": s.n_instances} for s in slices]

"""Plain data passed between the stages of the loop (the contracts between ``tasks/`` modules).

Everything here is a small dataclass of plain values that serialises to JSON (``to_dict`` /
``from_dict``), so it can be stored in S3 manifests and Prefect results.

S3 layout (buckets from settings):

- production bucket: ``frames/camera=<id>/date=<YYYY-MM-DD>/<frame_id>.jpg`` (written by cameras / the world).
- data bucket:
  - ``blobs/sha256/<hh>/<sha256>.<ext>``: content-addressed frames and label files (retention-proof).
  - ``datasets/<version_id>/manifest.json``: immutable dataset versions (``detloop.datasets``).
  - ``runs/<run_id>/...``: per-run sample manifests, quarantine manifests, selection reports.
  - ``predictions/window=<start>_<end>/model=<version>/predictions.jsonl``: production predictions.
  - ``rounds/<round_id>/round.json``: round records (status, deadline, frames, counts).
  - ``promotions/log.jsonl``: promotion log (MLflow keeps no alias history).
- oracle bucket: ``truth/<production key>.json``: synthetic ground truth, read only by the simulated
  annotator and the benchmarks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Any, Literal

import numpy as np

from detloop.detections import Detections

FRAME_KEY_RE = re.compile(r"camera=(?P<camera>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/(?P<frame>[^/]+)\.(?P<ext>jpe?g|png)$")

Arm = Literal["selected", "control"]


def parse_frame_key(key: str) -> tuple[str, date, str] | None:
    """``(camera, date, frame_id)`` of a production key, or None when the key is not a frame."""
    m = FRAME_KEY_RE.search(key)
    if not m:
        return None
    return m["camera"], date.fromisoformat(m["date"]), m["frame"]


def frame_hour(frame_id: str) -> int:
    """Hour of day encoded in a frame id ``<HHMMSS>-...`` (0 when absent)."""
    m = re.match(r"(\d{2})\d{4}", frame_id)
    return int(m.group(1)) if m else 0


class _Plain:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):  # type: ignore[no-untyped-def]
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class FrameRef(_Plain):
    """One production frame in S3."""

    bucket: str
    key: str
    etag: str
    camera: str
    date: str  # ISO date
    size: int = 0

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class Quarantined(_Plain):
    """A frame that could not be used, and why (kept in the run's quarantine manifest)."""

    bucket: str
    key: str
    reason: str


@dataclass
class SelectedFrame(_Plain):
    """A frame chosen for labelling, with what the annotator's task needs.

    ``predictions`` is ``Detections.to_dict()`` in frame pixels (the pre-annotation).
    """

    frame: FrameRef
    width: int
    height: int
    arm: Arm
    strategy: str
    uncertainty: float
    rank: int
    reason: str
    predictions: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectedFrame:
        d = dict(d)
        d["frame"] = FrameRef.from_dict(d["frame"])
        return super().from_dict(d)  # type: ignore[no-any-return]


@dataclass
class ScoringArtifactMeta(_Plain):
    """``meta.json`` beside ``model.onnx`` in every registered model version.

    The ONNX model takes ``images``: float32 ``(B, 3, S, S)`` RGB in [0, 1], letterboxed (pad 114,
    centred) to ``input_size``; it returns ``raw``: ``(B, 4 + C, A)`` (cx, cy, w, h in input pixels,
    then C independent sigmoid class scores) and ``embedding``: ``(B, D)`` (global-average-pooled neck
    features). ``head`` is the branch exported: ``one2many`` (YOLOv8/11 and YOLO26's NMS head; decoded with
    ``model.nms``) or ``one2one`` (YOLO26's NMS-free head before its top-k; decoded by top-k, no NMS).
    """

    class_names: list[str]
    input_size: int
    stride: int = 32
    embedding_dim: int = 0
    letterbox: dict[str, Any] = field(default_factory=lambda: {"center": True, "pad_value": 114, "auto": False})
    input_name: str = "images"
    outputs: dict[str, str] = field(default_factory=lambda: {"raw": "raw", "embedding": "embedding"})
    registry_version: str | None = None
    model_name: str | None = None
    head: str = "one2many"


RoundStatus = Literal["open", "completed", "closed_partial", "trained"]


@dataclass
class RoundRecord(_Plain):
    """``rounds/<round_id>/round.json``: one labelling round."""

    round_id: str
    as_of: str
    created_at: str
    deadline: str
    status: RoundStatus
    model_version: str | None
    n_selected: int
    n_control: int
    selection_report_key: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    completed_event_id: str | None = None
    announced_at: str | None = None  # when the round-completed event was last emitted (ISO, UTC)
    announcements: int = 0  # how many times it was emitted (more than once: a retrain died and it was re-sent)
    dataset_version: str | None = None
    project: str | None = None  # Label Studio project title: rounds are scoped to one project
    reason: str = "weekly"  # why it was opened: "weekly" (the cadence) or "drift" (a drift episode's round)
    focus_key: str | None = None  # for a drift round: the episode id (one round per episode)


# ------------------------------------------------------------------------------------------------
# Between scoring and selection
# ------------------------------------------------------------------------------------------------
@dataclass
class ScoredFrame:
    """One production frame after scoring.

    Attributes:
        frame: where it is in S3.
        width, height: frame size in pixels.
        detections: boxes in frame pixels with ``class_scores`` ``(N, C)`` (kept down to the scoring
            confidence threshold: sub-threshold candidates are kept on purpose).
        embedding: ``(D,)`` float32 image embedding, or None.
        brightness: mean grey level in [0, 1].
        contrast: standard deviation of the grey level in [0, 1].
        tta: detections on the horizontally flipped frame, mapped back (TTA pass), or None.
        committee: detections of the previous champion, or None.
    """

    frame: FrameRef
    width: int
    height: int
    detections: Detections
    embedding: np.ndarray | None = None
    brightness: float = 0.0
    contrast: float = 0.0
    tta: Detections | None = None
    committee: Detections | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-able row of ``predictions.jsonl`` (embedding stored separately)."""
        r: dict[str, Any] = {
            "frame": self.frame.to_dict(),
            "width": self.width,
            "height": self.height,
            "brightness": round(self.brightness, 5),
            "contrast": round(self.contrast, 5),
            "detections": self.detections.to_dict(),
        }
        if self.tta is not None:
            r["tta"] = self.tta.to_dict()
        if self.committee is not None:
            r["committee"] = self.committee.to_dict()
        return r

    @classmethod
    def from_record(cls, r: dict[str, Any], embedding: np.ndarray | None = None) -> ScoredFrame:
        return cls(
            frame=FrameRef.from_dict(r["frame"]),
            width=int(r["width"]),
            height=int(r["height"]),
            detections=Detections.from_dict(r["detections"]),
            embedding=embedding,
            brightness=float(r.get("brightness", 0.0)),
            contrast=float(r.get("contrast", 0.0)),
            tta=Detections.from_dict(r["tta"]) if r.get("tta") else None,
            committee=Detections.from_dict(r["committee"]) if r.get("committee") else None,
        )


# ------------------------------------------------------------------------------------------------
# Between a labelling round and its dataset version
# ------------------------------------------------------------------------------------------------
@dataclass
class Quality:
    """Label quality of one frame against its pre-annotation (box counts)."""

    predicted: int = 0
    accepted: int = 0
    moved: int = 0
    deleted: int = 0
    added: int = 0

    @property
    def hard(self) -> bool:
        return bool(self.moved or self.deleted or self.added)

    def __add__(self, o: Quality) -> Quality:
        return Quality(*(a + b for a, b in zip(astuple_q(self), astuple_q(o), strict=True)))


def astuple_q(q: Quality) -> tuple[int, int, int, int, int]:
    return (q.predicted, q.accepted, q.moved, q.deleted, q.added)


@dataclass
class LabelledFrame:
    """One labelled frame of a round, ready to become a dataset entry."""

    task_id: int
    bucket: str
    key: str
    width: int
    height: int
    arm: str
    camera: str
    date: str
    detections: Detections
    quality: Quality
    annotations: int = 1
    sha256: str | None = None
    blob_key: str | None = None

    @property
    def hard(self) -> bool:
        return self.quality.hard

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("detections", "quality")}
        d["detections"] = self.detections.to_dict()
        d["quality"] = asdict(self.quality)
        d["hard"] = self.hard
        return d


@dataclass
class RoundCompleted(_Plain):
    """A round that is done (all tasks labelled or skipped, or past its deadline), to be announced once.

    ``event_id`` is the same on every re-run (a uuid5 of the round id): consumers deduplicate on it.
    """

    round_id: str
    status: str
    partial: bool
    model_version: str | None
    counts: dict[str, int]
    event_id: str

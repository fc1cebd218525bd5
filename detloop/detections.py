"""The one detection type of detloop, and its adapters.

``Detections`` holds parallel numpy arrays for the boxes of ONE image:

- ``xyxy``: float32 ``(N, 4)``, pixels of the original frame.
- ``confidence``: float32 ``(N,)`` (1.0 for human labels).
- ``class_id``: int64 ``(N,)`` indices into the configured class list.
- ``class_scores``: optional float32 ``(N, C)``: the per-class score vector the model produced for
  each kept box (independent sigmoids for YOLO heads; not normalised).
- ``data``: optional dict of extra per-box arrays, each with first dimension N.

Adapters convert to and from Ultralytics results, raw YOLO head output (letterbox undone), Label
Studio rectangle results (percent coordinates), YOLO txt (normalised centre/size) and COCO
annotations (``[x, y, w, h]`` in pixels). None of them imports the library they adapt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detloop.ops import Letterbox, box_area, nms


class UnknownLabelsError(ValueError):
    """Raised when labels name classes outside the configured list; ``unknown`` lists them."""

    def __init__(self, unknown: Iterable[str], known: Sequence[str]):
        self.unknown = sorted(set(unknown))
        self.known = list(known)
        super().__init__(f"unknown label(s) {self.unknown}; configured classes are {self.known}")


@dataclass
class Detections:
    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_scores: np.ndarray | None = None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4) if np.size(self.xyxy) else np.zeros(
            (0, 4), np.float32
        )
        n = len(self.xyxy)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        if self.confidence.shape != (n,):
            raise ValueError(f"confidence must have shape ({n},), got {self.confidence.shape}")
        if self.class_id.shape != (n,):
            raise ValueError(f"class_id must have shape ({n},), got {self.class_id.shape}")
        if self.class_scores is not None:
            cs = np.asarray(self.class_scores, dtype=np.float32)
            if cs.ndim != 2 or cs.shape[0] != n:
                raise ValueError(f"class_scores must have shape ({n}, C), got {cs.shape}")
            self.class_scores = cs
        for k, v in self.data.items():
            v = np.asarray(v)
            if len(v) != n:
                raise ValueError(f"data[{k!r}] must have length {n}, got {len(v)}")
            self.data[k] = v

    # ---- basics ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> Detections:
        """Index with a boolean mask, an integer array, a slice or an int (kept as 1 box)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            xyxy=self.xyxy[index],
            confidence=self.confidence[index],
            class_id=self.class_id[index],
            class_scores=None if self.class_scores is None else self.class_scores[index],
            data={k: v[index] for k, v in self.data.items()},
        )

    @property
    def area(self) -> np.ndarray:
        """Box areas ``(N,)`` in square pixels."""
        return box_area(self.xyxy)

    @property
    def num_classes(self) -> int | None:
        return None if self.class_scores is None else int(self.class_scores.shape[1])

    @classmethod
    def empty(cls, num_classes: int | None = None) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros(0, np.float32),
            class_id=np.zeros(0, np.int64),
            class_scores=None if num_classes is None else np.zeros((0, num_classes), np.float32),
        )

    @classmethod
    def merge(cls, parts: Sequence[Detections]) -> Detections:
        """Concatenate detections of the same image. Class-score vectors are kept only when all have them."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls.empty()
        nonempty = [p for p in parts if len(p)] or parts[:1]
        has_scores = all(p.class_scores is not None for p in nonempty)
        keys = set.intersection(*(set(p.data) for p in nonempty)) if nonempty else set()
        return cls(
            xyxy=np.concatenate([p.xyxy for p in nonempty]),
            confidence=np.concatenate([p.confidence for p in nonempty]),
            class_id=np.concatenate([p.class_id for p in nonempty]),
            class_scores=np.concatenate([p.class_scores for p in nonempty]) if has_scores else None,  # type: ignore[misc]
            data={k: np.concatenate([p.data[k] for p in nonempty]) for k in keys},
        )

    def with_nms(self, iou_threshold: float = 0.6, class_agnostic: bool = False) -> Detections:
        keep = nms(self.xyxy, self.confidence, iou_threshold, None if class_agnostic else self.class_id)
        return self[keep]

    def equals(self, other: Detections, atol: float = 1e-3) -> bool:
        return (
            len(self) == len(other)
            and np.allclose(self.xyxy, other.xyxy, atol=atol)
            and np.allclose(self.confidence, other.confidence, atol=atol)
            and np.array_equal(self.class_id, other.class_id)
        )

    # ---- Ultralytics ----------------------------------------------------------------------------
    @classmethod
    def from_ultralytics(cls, result: Any) -> Detections:
        """From one ``ultralytics.engine.results.Results`` (boxes in original-frame pixels)."""
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return cls.empty()

        def _np(t: Any) -> np.ndarray:
            return t.cpu().numpy() if hasattr(t, "cpu") else np.asarray(t)

        return cls(xyxy=_np(boxes.xyxy), confidence=_np(boxes.conf), class_id=_np(boxes.cls).astype(np.int64))

    @classmethod
    def from_yolo_raw(
        cls,
        raw: np.ndarray,
        letterbox: Letterbox,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        max_det: int = 300,
        max_candidates: int = 30000,
        class_agnostic: bool = False,
    ) -> Detections:
        """Decode one image's raw YOLO (v8/11) head output with NMS that carries score vectors along.

        Args:
            raw: ``(4 + C, A)``: per anchor, ``cx, cy, w, h`` in model-input pixels followed by C
                independent sigmoid class scores.
            letterbox: geometry used to make the input; boxes are mapped back to the frame.
            conf_threshold: minimum top-class score kept.
            iou_threshold: NMS IoU threshold (per class unless ``class_agnostic``).
            max_det: detections kept after NMS.

        Returns:
            Detections in frame pixels with ``class_scores`` ``(N, C)``.
        """
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim != 2 or raw.shape[0] < 5:
            raise ValueError(f"raw head output must have shape (4+C, anchors), got {raw.shape}")
        nc = raw.shape[0] - 4
        scores = raw[4:].T  # (A, C)
        conf = scores.max(axis=1)
        cand = np.nonzero(conf > conf_threshold)[0]
        if cand.size == 0:
            return cls.empty(nc)
        if cand.size > max_candidates:
            cand = cand[np.argsort(-conf[cand])[:max_candidates]]
        box = raw[:4, cand].T
        xyxy = np.empty_like(box)
        xyxy[:, 0] = box[:, 0] - box[:, 2] / 2
        xyxy[:, 1] = box[:, 1] - box[:, 3] / 2
        xyxy[:, 2] = box[:, 0] + box[:, 2] / 2
        xyxy[:, 3] = box[:, 1] + box[:, 3] / 2
        cs = scores[cand]
        cid = cs.argmax(axis=1)
        cf = conf[cand]
        keep = nms(xyxy, cf, iou_threshold, None if class_agnostic else cid)[:max_det]
        return cls(
            xyxy=letterbox.to_frame(xyxy[keep]),
            confidence=cf[keep],
            class_id=cid[keep],
            class_scores=cs[keep],
        )

    # ---- Label Studio -------------------------------------------------------------------------
    def to_label_studio(
        self,
        width: int,
        height: int,
        class_names: Sequence[str],
        from_name: str = "label",
        to_name: str = "image",
        with_score: bool = True,
    ) -> list[dict[str, Any]]:
        """Rectangle results in percent of the image, as Label Studio stores them."""
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            r: dict[str, Any] = {
                "id": f"b{i}",
                "from_name": from_name,
                "to_name": to_name,
                "type": "rectanglelabels",
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {
                    "x": 100.0 * x1 / width,
                    "y": 100.0 * y1 / height,
                    "width": 100.0 * (x2 - x1) / width,
                    "height": 100.0 * (y2 - y1) / height,
                    "rotation": 0,
                    "rectanglelabels": [class_names[int(self.class_id[i])]],
                },
            }
            if with_score:
                r["score"] = float(self.confidence[i])
            out.append(r)
        return out

    @classmethod
    def from_label_studio(
        cls,
        results: Sequence[dict[str, Any]],
        class_names: Sequence[str],
        width: int | None = None,
        height: int | None = None,
    ) -> Detections:
        """From Label Studio rectangle results (other result types are ignored).

        ``original_width/height`` of each result win over ``width/height``. Rotated rectangles are
        replaced by their axis-aligned bounding box.

        Raises:
            UnknownLabelsError: listing every label name not in ``class_names``.
        """
        index = {n: i for i, n in enumerate(class_names)}
        boxes, conf, cids, unknown = [], [], [], []
        for r in results:
            if r.get("type") != "rectanglelabels":
                continue
            v = r["value"]
            labels = v.get("rectanglelabels") or []
            if not labels:
                continue
            name = labels[0]
            if name not in index:
                unknown.append(name)
                continue
            w = r.get("original_width") or width
            h = r.get("original_height") or height
            if not w or not h:
                raise ValueError("Label Studio result lacks original_width/original_height and no size was given")
            x, y, bw, bh = (float(v[k]) for k in ("x", "y", "width", "height"))
            rot = float(v.get("rotation") or 0.0)
            if rot:
                # corners of the rotated rectangle (rotation about the top-left corner, degrees clockwise)
                t = np.deg2rad(rot)
                px = np.array([0, bw * w / 100, bw * w / 100, 0])
                py = np.array([0, 0, bh * h / 100, bh * h / 100])
                cx = x * w / 100 + px * np.cos(t) - py * np.sin(t)
                cy = y * h / 100 + px * np.sin(t) + py * np.cos(t)
                boxes.append([cx.min(), cy.min(), cx.max(), cy.max()])
            else:
                boxes.append([x * w / 100, y * h / 100, (x + bw) * w / 100, (y + bh) * h / 100])
            conf.append(float(r.get("score", 1.0) if r.get("score") is not None else 1.0))
            cids.append(index[name])
        if unknown:
            raise UnknownLabelsError(unknown, class_names)
        if not boxes:
            return cls.empty()
        return cls(xyxy=np.array(boxes), confidence=np.array(conf), class_id=np.array(cids))

    # ---- YOLO txt -------------------------------------------------------------------------------
    def to_yolo_txt(self, width: int, height: int) -> str:
        """One line per box: ``class cx cy w h`` normalised to [0, 1] (Ultralytics' label format)."""
        lines = []
        for (x1, y1, x2, y2), c in zip(self.xyxy.astype(np.float64), self.class_id, strict=True):
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            bw, bh = (x2 - x1) / width, (y2 - y1) / height
            lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        return "\n".join(lines) + ("\n" if lines else "")

    @classmethod
    def from_yolo_txt(cls, text: str, width: int, height: int, num_classes: int | None = None) -> Detections:
        """Parse YOLO txt labels (confidence 1.0, or the 6th column when present)."""
        rows = []
        for ln, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (5, 6):
                raise ValueError(f"line {ln}: expected 'class cx cy w h [conf]', got {line!r}")
            rows.append([float(p) for p in parts])
        if not rows:
            return cls.empty()
        a = np.array(rows, dtype=np.float64)
        cid = a[:, 0].astype(np.int64)
        if num_classes is not None and ((cid < 0) | (cid >= num_classes)).any():
            bad = sorted(set(cid[(cid < 0) | (cid >= num_classes)].tolist()))
            raise ValueError(f"class ids {bad} outside [0, {num_classes})")
        cx, cy, bw, bh = a[:, 1] * width, a[:, 2] * height, a[:, 3] * width, a[:, 4] * height
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        conf = a[:, 5] if a.shape[1] == 6 else np.ones(len(a))
        return cls(xyxy=xyxy, confidence=conf, class_id=cid)

    # ---- COCO ---------------------------------------------------------------------------------
    def to_coco(self, image_id: int, start_id: int = 1, category_ids: Sequence[int] | None = None,
                as_results: bool = False) -> list[dict[str, Any]]:
        """COCO annotations (``as_results=False``) or detection results (with ``score``).

        ``category_ids[class_id]`` maps to COCO category ids (default ``class_id + 1``).
        """
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            c = int(self.class_id[i])
            cat = category_ids[c] if category_ids is not None else c + 1
            d: dict[str, Any] = {"image_id": int(image_id), "category_id": int(cat), "bbox": [x1, y1, x2 - x1, y2 - y1]}
            if as_results:
                d["score"] = float(self.confidence[i])
            else:
                d.update(id=start_id + i, area=(x2 - x1) * (y2 - y1), iscrowd=0)
            out.append(d)
        return out

    @classmethod
    def from_coco(cls, annotations: Sequence[dict[str, Any]], category_ids: Sequence[int] | None = None) -> Detections:
        """From COCO annotations or results of one image (``bbox`` = x, y, w, h in pixels)."""
        if not annotations:
            return cls.empty()
        lookup = {cat: i for i, cat in enumerate(category_ids)} if category_ids is not None else None
        xyxy, conf, cid = [], [], []
        for a in annotations:
            x, y, w, h = (float(v) for v in a["bbox"])
            xyxy.append([x, y, x + w, y + h])
            conf.append(float(a.get("score", 1.0)))
            cat = int(a["category_id"])
            if lookup is not None:
                if cat not in lookup:
                    raise ValueError(f"COCO category_id {cat} not in {list(lookup)}")
                cid.append(lookup[cat])
            else:
                cid.append(cat - 1)
        return cls(xyxy=np.array(xyxy), confidence=np.array(conf), class_id=np.array(cid))

    # ---- serialisation (for manifests and stored predictions) ------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "xyxy": np.round(self.xyxy.astype(np.float64), 3).tolist(),
            "confidence": np.round(self.confidence.astype(np.float64), 5).tolist(),
            "class_id": self.class_id.tolist(),
        }
        if self.class_scores is not None:
            d["class_scores"] = np.round(self.class_scores.astype(np.float64), 5).tolist()
            d["num_classes"] = int(self.class_scores.shape[1])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detections:
        return cls(
            xyxy=np.asarray(d.get("xyxy", []), dtype=np.float32).reshape(-1, 4),
            confidence=np.asarray(d.get("confidence", []), dtype=np.float32),
            class_id=np.asarray(d.get("class_id", []), dtype=np.int64),
            class_scores=None
            if d.get("class_scores") is None
            else np.asarray(d["class_scores"], np.float32).reshape(-1, int(d.get("num_classes") or 1)),
        )

"""The champion as a served detector: encoded images in, boxes in frame pixels out (no torch, no Ultralytics).

:class:`Detector` runs a scoring artifact (``model.onnx`` + ``meta.json``, :mod:`tasks.export`) on ONNX
Runtime with detloop's one preprocessing (:mod:`detloop.preprocess`) and decode (:mod:`detloop.postprocess`):
the boxes it returns for a frame are the boxes production scoring stores for that frame, with the same
settings. The registered MLflow model (:mod:`detloop.pyfunc_model`, a ``mlflow.pyfunc`` model built by
:func:`build_pyfunc_model`) is a thin wrapper around it::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/detloop-detector@champion")
    out = model.predict(pd.DataFrame({"image": [jpeg_bytes]}), params={"conf_threshold": 0.25})
    out.loc[0, "boxes"]  # [[x1, y1, x2, y2], ...] in frame pixels

or ``mlflow models serve -m models:/detloop-detector@champion --env-manager local -p 5055`` and
``POST /invocations {"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG>"]]}}``.

``serving.json`` (beside the artifact) holds the defaults: the scoring decode (``model.scoring_conf_threshold``,
``iou_threshold``, ``max_det``, ``scoring_max_candidates``), ``fast_decode``, the class names and the per-class
serving thresholds (best F1 on the golden slice). Per request, ``params`` may change ``conf_threshold``,
``iou_threshold``, ``max_det`` and ``class_thresholds`` (true: drop boxes under their class's threshold).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.postprocess import DecodeParams, decode_inputs, for_head
from detloop.tiling import TileSpec

SERVING_CONFIG = "serving.json"
INPUT_COLUMN = "image"
CAMERA_COLUMN = "camera"  # optional: a camera with its own tiling (model.tiling.cameras)
OUTPUT_COLUMNS = ("boxes", "class_ids", "class_names", "scores", "width", "height", "error")
# what the pyfunc model needs at run time: no torch, no ultralytics (pinned to the versions that built it)
RUNTIME_PACKAGES = ("mlflow", "onnxruntime", "numpy", "pandas", "opencv-python-headless")


@dataclass
class ServingConfig:
    """Defaults of the served model (``serving.json``).

    Attributes:
        decode: how raw output becomes boxes (the production scoring decode by default).
        fast_decode: decode large JPEGs at reduced scale, as scoring does.
        class_names: the model's classes, in class-id order.
        thresholds: per-class confidence for ``class_thresholds=true`` (best F1 on the golden slice).
        model_name, version: registry coordinates, recorded for the caller.
        tiling: how frames are tiled (``model.tiling``), None: scored whole.
        camera_tiling: cameras whose tiling differs (``model.tiling.cameras``; None: that camera is not tiled).
    """

    decode: DecodeParams
    fast_decode: bool
    class_names: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)
    model_name: str | None = None
    version: str | None = None
    tiling: TileSpec | None = None
    camera_tiling: dict[str, TileSpec | None] = field(default_factory=dict)

    def tiling_for(self, camera: str | None) -> TileSpec | None:
        return self.camera_tiling[camera] if camera in self.camera_tiling else self.tiling

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServingConfig:
        def spec(v: dict[str, Any] | None) -> TileSpec | None:
            return TileSpec(**v) if v else None

        return cls(DecodeParams(**d["decode"]), bool(d["fast_decode"]), list(d["class_names"]),
                   {k: float(v) for k, v in (d.get("thresholds") or {}).items()}, d.get("model_name"),
                   d.get("version"), spec(d.get("tiling")),
                   {k: spec(v) for k, v in (d.get("camera_tiling") or {}).items()})

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, path: str | Path) -> ServingConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


class Detector:
    """A scoring artifact on ONNX Runtime with detloop's preprocessing and decode.

    Args:
        scoring_dir: directory with ``model.onnx`` and ``meta.json``.
        config: the serving defaults.
        threads: ONNX Runtime intra-op threads (None: all cores).
    """

    def __init__(self, scoring_dir: str | Path, config: ServingConfig, threads: int | None = None):
        import onnxruntime as ort

        from detloop.contracts import ScoringArtifactMeta

        d = Path(scoring_dir)
        self.meta = ScoringArtifactMeta.from_dict(json.loads((d / "meta.json").read_text()))
        self.config = config
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(d / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self._raw = self.meta.outputs.get("raw", "raw")

    def detect(self, images: Sequence[bytes], params: dict[str, Any] | None = None,
               batch: int = 8, cameras: Sequence[str | None] | None = None) -> list[Detections | str]:
        """Boxes of each encoded image (JPEG/PNG bytes), or the reason an image is unusable.

        Args:
            images: encoded frames.
            params: per-request overrides: ``conf_threshold``, ``iou_threshold``, ``max_det``,
                ``class_thresholds`` (bool).
            batch: frames per ONNX Runtime call (a tiled frame's tiles go in the same call).
            cameras: each image's camera (its tiling, as in scoring); None: the default tiling.

        Returns:
            Per image, :class:`Detections` in frame pixels (``class_scores`` ``(N, C)`` kept) or a reason.
        """
        from detloop.preprocess import load_frame_for_model, to_tensors

        p = dict(params or {})
        decode = for_head(replace(self.config.decode, **{k: type(getattr(self.config.decode, k))(p[k])
                                                         for k in ("conf_threshold", "iou_threshold", "max_det")
                                                         if p.get(k) is not None}), self.meta.head)
        size = int(self.meta.input_size)
        cams = list(cameras) if cameras is not None else [None] * len(images)
        prepared = [load_frame_for_model(bytes(b), size, self.config.fast_decode,
                                         tiling=self.config.tiling_for(c)) for b, c in zip(images, cams, strict=True)]
        out: list[Detections | str] = [m if isinstance(m, str) else Detections.empty() for m in prepared]
        ok = [i for i, m in enumerate(prepared) if not isinstance(m, str)]
        for s in range(0, len(ok), batch):
            idx = ok[s : s + batch]
            inputs = [prepared[i] for i in idx]
            x = to_tensors([m.image for f in inputs for m in f.parts])  # type: ignore[union-attr]
            raw = self.session.run([self._raw], {self.meta.input_name: x})[0]
            for i, d in zip(idx, decode_inputs(raw, inputs, decode), strict=True):  # type: ignore[arg-type]
                out[i] = self._class_filter(d) if p.get("class_thresholds") else d
        return out

    def _class_filter(self, d: Detections) -> Detections:
        names = self.config.class_names
        th = np.array([self.config.thresholds.get(n, 0.0) for n in names], np.float32)
        return d[d.confidence >= th[d.class_id]] if len(d) else d

    def rows(self, images: Sequence[bytes], params: dict[str, Any] | None = None,
             cameras: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """:meth:`detect` as one plain row per image (the pyfunc model's output columns)."""
        from detloop.preprocess import jpeg_size, png_size

        out = []
        for b, d in zip(images, self.detect(images, params, cameras=cameras), strict=True):
            wh = jpeg_size(bytes(b)) or png_size(bytes(b)) or (0, 0)
            if isinstance(d, str):
                out.append({"boxes": [], "class_ids": [], "class_names": [], "scores": [], "width": int(wh[0]),
                            "height": int(wh[1]), "error": d})
                continue
            out.append({
                "boxes": [[round(float(v), 3) for v in box] for box in d.xyxy],
                "class_ids": [int(c) for c in d.class_id],
                "class_names": [self.config.class_names[int(c)] for c in d.class_id],
                "scores": [round(float(s), 5) for s in d.confidence],
                "width": int(wh[0]), "height": int(wh[1]), "error": "",
            })
        return out


# --------------------------------------------------------------------------------------------
# The MLflow pyfunc model (built at registration; MLflow is imported only here and in pyfunc_model.py)
# --------------------------------------------------------------------------------------------
def _runtime_requirements() -> list[str]:
    """Pinned pip requirements of the served model: the installed versions of :data:`RUNTIME_PACKAGES`."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for name in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def example_image(width: int = 160, height: int = 120) -> bytes:
    """A small JPEG (grey frame with two shapes): the input example stored with the model."""
    import cv2

    img = np.full((height, width, 3), 96, np.uint8)
    cv2.rectangle(img, (20, 20), (60, 70), (30, 200, 30), -1)
    cv2.circle(img, (115, 60), 25, (200, 40, 40), -1)
    ok, buf = cv2.imencode(".jpg", img)
    if not ok:  # pragma: no cover - OpenCV always encodes this
        raise RuntimeError("cannot encode the example image")
    return bytes(buf.tobytes())


def signature(config: ServingConfig) -> Any:
    """The model signature: a binary ``image`` column in; boxes, classes and scores per image out; params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.binary, INPUT_COLUMN), ColSpec(DataType.string, CAMERA_COLUMN, required=False)])
    outputs = Schema([
        ColSpec(Array(Array(DataType.double)), "boxes"),
        ColSpec(Array(DataType.long), "class_ids"),
        ColSpec(Array(DataType.string), "class_names"),
        ColSpec(Array(DataType.double), "scores"),
        ColSpec(DataType.long, "width"),
        ColSpec(DataType.long, "height"),
        ColSpec(DataType.string, "error"),
    ])
    d = config.decode
    params = ParamSchema([
        ParamSpec("conf_threshold", DataType.double, float(d.conf_threshold)),
        ParamSpec("iou_threshold", DataType.double, float(d.iou_threshold)),
        ParamSpec("max_det", DataType.long, int(d.max_det)),
        ParamSpec("class_thresholds", DataType.boolean, False),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def build_pyfunc_model(files_dir: Path, out_dir: Path, config: ServingConfig) -> Path:
    """Save an MLflow pyfunc model into ``out_dir`` from a version's files in ``files_dir``.

    ``files_dir`` holds ``scoring/`` (the evaluated ``model.onnx`` + ``meta.json``), ``weights/best.pt``,
    ``thresholds.json`` and optionally ``eval_report.json``. The pyfunc model's artifacts are ``scoring``
    (copied byte for byte into ``artifacts/scoring/``), ``serving`` (``serving.json``) and ``thresholds``;
    the weights and the evaluation report are added beside them (``weights/``, ``eval_report.json``), so a
    version carries what fine-tuning needs without making the served model depend on torch.

    Returns:
        ``out_dir`` (``MLmodel``, ``pyfunc_model.py``, ``code/detloop/``, ``artifacts/``, ...).
    """
    import shutil

    import mlflow.pyfunc
    import pandas as pd

    here = Path(__file__).resolve().parent
    serving = config.write(files_dir / SERVING_CONFIG)
    artifacts = {"scoring": str(files_dir / "scoring"), "serving": str(serving)}
    if (files_dir / "thresholds.json").is_file():
        artifacts["thresholds"] = str(files_dir / "thresholds.json")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    code = out_dir.parent / f"{out_dir.name}-code"
    if code.exists():
        shutil.rmtree(code)
    shutil.copytree(here, code / "detloop", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    mlflow.pyfunc.save_model(
        path=str(out_dir),
        python_model=str(here / "pyfunc_model.py"),
        artifacts=artifacts,
        code_paths=[str(code / "detloop")],
        signature=signature(config),
        input_example=(pd.DataFrame({INPUT_COLUMN: [example_image()]}), {"conf_threshold": config.decode.conf_threshold}),
        pip_requirements=_runtime_requirements(),
        metadata={"detloop.model_name": config.model_name or "", "detloop.classes": ",".join(config.class_names),
                  "detloop.input": "encoded images (JPEG/PNG bytes) in column 'image'",
                  "detloop.output": "boxes [x1,y1,x2,y2] in frame pixels, class_ids, class_names, scores"},
    )
    shutil.rmtree(code)
    for extra in ("weights", "eval_report.json"):
        src = files_dir / extra
        if src.is_dir():
            shutil.copytree(src, out_dir / extra)
        elif src.is_file():
            shutil.copyfile(src, out_dir / extra)
    return out_dir

"""Scoring production frames with the champion: boxes + class-score vectors + embedding + image stats.

- :func:`load_scorer` opens a scoring artifact (directory with ``model.onnx`` + ``meta.json``, see
  :class:`~detloop.contracts.ScoringArtifactMeta`) on ONNX Runtime, or a ``.pt`` file on torch via
  Ultralytics (fallback). :func:`resolve_model` fetches the champion from the MLflow registry
  (``models:/<name>@champion``, through :func:`tasks.registry.load_champion`) and says clearly when there is none.
- :func:`iter_decoded` is the prefetching reader: a thread pool downloads, validates, decodes and
  letterboxes frames ahead of inference (cv2 releases the GIL) with :mod:`detloop.preprocess`; bad objects
  come out as :class:`~detloop.contracts.Quarantined`.
- :func:`score` runs batches (concurrently on ONNX Runtime: ``model.inference_workers`` sessions calls of
  ``model.inference_threads`` intra-op threads each, so a worker preempted by the reader does not stall
  the others at a thread barrier), decodes the raw head ``(B, 4+C, A)`` with NMS that carries the class
  score columns along (:func:`detloop.postprocess.decode_raw`, the decode evaluation and the registered
  MLflow model use too), and keeps the embedding and per-frame
  brightness/contrast. Optional TTA (horizontal flip) and committee (previous champion) passes.
- :func:`write_predictions` stores production predictions per window as JSONL (+ ``embeddings.npy``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from detloop.contracts import FrameRef, Quarantined, ScoredFrame, ScoringArtifactMeta
from detloop.detections import Detections
from detloop.errors import DataError, NotFound
from detloop.postprocess import DecodeParams, decode_inputs, flip_raw, for_head
from detloop.preprocess import DEFAULT_MAX_PIXELS, FrameInput, load_frame_for_model, to_tensors
from detloop.settings import ModelSettings, Settings
from detloop.tiling import TileSpec


# --------------------------------------------------------------------------------------------
# Plain data
# --------------------------------------------------------------------------------------------
@dataclass
class DecodedFrame:
    """A frame ready for inference.

    Attributes:
        ref: the frame.
        input: its model input(s) (:class:`detloop.preprocess.FrameInput`: one letterboxed uint8 ``(S, S, 3)``
            BGR image, 4x smaller than its float tensor while it waits in the prefetch queue, or one per tile
            when the camera is tiled); :func:`to_tensors` converts whole batches into a reused buffer.
    """

    ref: FrameRef
    input: FrameInput


@dataclass
class ScoringResult:
    """What :func:`score` returns: scored frames (input order minus quarantined), quarantine, timings (s)."""

    frames: list[ScoredFrame]
    quarantined: list[Quarantined]
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # where the predictions are stored (data bucket)

    def embeddings(self) -> np.ndarray | None:
        if not self.frames or any(f.embedding is None for f in self.frames):
            return None
        return np.stack([f.embedding for f in self.frames]).astype(np.float32)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------
class Scorer(Protocol):
    """A model that maps a batch to (raw head, embedding)."""

    meta: ScoringArtifactMeta
    name: str

    concurrent: bool  # whether infer() may be called from several threads at once

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(B, 3, S, S)`` float32 -> raw ``(B, 4+C, A)`` and embedding ``(B, D)`` (or None)."""
        ...


class OnnxScorer:
    """ONNX Runtime on CPU over a scoring artifact directory (``InferenceSession.run`` is thread-safe)."""

    concurrent = True

    def __init__(self, directory: Path, threads: int | None = None, spin: bool = False):
        """Open ``directory/model.onnx``.

        Args:
            directory: scoring artifact directory.
            threads: intra-op threads (None: ONNX Runtime's default, all cores).
            spin: let idle intra-op threads spin-wait. Off by default: while the reader threads decode
                the next batch, spinning threads only burn the cores they need.
        """
        import onnxruntime as ort

        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        try:
            self.meta = ScoringArtifactMeta.from_dict(json.loads(meta_path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise DataError(f"scoring artifact {self.directory}: unreadable meta.json ({err})") from err
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.directory / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise DataError(f"scoring artifact {self.directory}: cannot load model.onnx ({err})") from err
        outs = [o.name for o in self.session.get_outputs()]
        self._raw = self.meta.outputs.get("raw", "raw")
        self._emb = self.meta.outputs.get("embedding", "embedding")
        if self._raw not in outs:
            raise DataError(f"scoring artifact {self.directory}: no output {self._raw!r} (outputs: {outs})")
        self._out_names = [self._raw] + ([self._emb] if self._emb in outs else [])
        m = self.meta
        # "<registered name>-v<version>" for registry models (names the predictions prefix), else the folder
        self.name = (f"{m.model_name}-v{m.registry_version}" if m.model_name and m.registry_version
                     else m.registry_version or self.directory.name)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        res = self.session.run(self._out_names, {self.meta.input_name: np.ascontiguousarray(batch, np.float32)})
        return res[0], (res[1] if len(res) > 1 else None)


class TorchScorer:
    """Fallback: an Ultralytics ``.pt`` on torch; the embedding is the GAP of the Detect head inputs."""

    concurrent = False  # the embedding comes from a forward hook's state

    def __init__(self, weights: Path, input_size: int, class_names: Sequence[str] | None = None,
                 threads: int | None = None):
        import torch
        from ultralytics import YOLO

        if threads:
            torch.set_num_threads(threads)
        try:
            yolo = YOLO(str(weights))
        except Exception as err:  # ultralytics raises assorted types on bad files
            raise DataError(f"cannot load model weights {weights}: {err}") from err
        self.model = yolo.model.float().eval()
        if getattr(self.model.model[-1], "one2one_cv2", None) is not None:  # YOLO26: its one-to-many head, (B, 4+C, A)
            self.model.model[-1].end2end = False
        names = yolo.names
        cn = list(class_names) if class_names else [names[i] for i in sorted(names)]
        self.meta = ScoringArtifactMeta(class_names=cn, input_size=input_size, stride=int(self.model.stride.max()))
        self.name = Path(weights).name
        self._feats: list[Any] = []
        self.model.model[-1].register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, inputs: tuple[Any, ...]) -> None:
        self._feats = list(inputs[0])

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
            raw = out[0] if isinstance(out, (tuple, list)) else out
            emb = torch.cat([f.mean(dim=(2, 3)) for f in self._feats], dim=1) if self._feats else None
        return raw.numpy(), None if emb is None else emb.numpy()


def load_scorer(path: str | Path, model_settings: ModelSettings | None = None,
                class_names: Sequence[str] | None = None, threads: int | None = None) -> Scorer:
    """Open a scoring model.

    Args:
        path: a directory with ``model.onnx`` + ``meta.json`` (ONNX Runtime), a ``model.onnx`` file
            beside its ``meta.json``, or an Ultralytics ``.pt`` (torch fallback).
        model_settings: input size for ``.pt`` files; ``backend: torch`` forces torch when a ``.pt``
            sits in the artifact directory.
        class_names: class names for ``.pt`` files (default: the model's).
        threads: intra-op threads (default: ``model.inference_threads`` on ONNX Runtime, all cores on torch).

    Raises:
        DataError: the path is missing or is not a scoring artifact.
    """
    p = Path(path)
    ms = model_settings or ModelSettings()
    if p.is_file() and p.suffix == ".onnx":
        p = p.parent
    if p.is_dir():
        pts = sorted(p.glob("*.pt"))
        if ms.backend == "torch" and pts:
            return TorchScorer(pts[0], ms.input_size, class_names, threads)
        if (p / "model.onnx").is_file() and (p / "meta.json").is_file():
            return OnnxScorer(p, threads if threads is not None else ms.inference_threads)
        if pts:
            return TorchScorer(pts[0], ms.input_size, class_names, threads)
        raise DataError(f"{p}: not a scoring artifact (needs model.onnx + meta.json, or a .pt file)")
    if p.is_file() and p.suffix == ".pt":
        return TorchScorer(p, ms.input_size, class_names, threads)
    raise DataError(f"model not found: {p} (expected a scoring artifact directory or a .pt file)")


@dataclass(frozen=True)
class ModelRef:
    """Which model scores: a registry version (fetched on the machine that scores) or a local artifact.

    Plain data, so it travels to a Dask worker where the model is fetched once per version.
    """

    version: str | None = None  # registry version of settings.mlflow.model_name
    path: str | None = None  # a scoring artifact directory or an Ultralytics .pt (by hand, benchmarks)

    @property
    def label(self) -> str:
        return f"v{self.version}" if self.version else str(self.path)

    def content_id(self) -> str:
        """What identifies the model's content: the registry version, or ``file-<sha256[:12]>`` of its file."""
        if self.version is not None:
            return str(self.version)
        from detloop.datasets import file_sha256

        p = Path(str(self.path))
        if p.is_dir():
            onnx, pts = p / "model.onnx", sorted(p.glob("*.pt"))
            p = onnx if onnx.is_file() else (pts[0] if pts else onnx)
        if not p.is_file():
            raise DataError(f"model not found: {self.path} (expected a scoring artifact directory or a .pt file)")
        return "file-" + file_sha256(p)[:12]


def open_model(settings: Settings, registry: Any, ref: ModelRef, threads: int | None = None) -> Scorer:
    """The scorer of ``ref`` (a registry version is downloaded into ``data_dir`` once per version)."""
    if ref.path:
        return load_scorer(ref.path, settings.model, settings.classes, threads)
    from tasks.registry import load_champion

    local = load_champion(settings, registry, version=ref.version)
    if local is None:  # pragma: no cover - load_champion raises NotFound for a missing version
        raise NotFound(f"model {settings.mlflow.model_name} has no version {ref.version}")
    return load_scorer(local / "scoring", settings.model, settings.classes, threads)


def score_with(settings: Settings, clients: Any, frames: Sequence[FrameRef], model: ModelRef,
               committee: ModelRef | None = None, tta: bool = False) -> ScoringResult:
    """Open ``model`` (and the ``committee`` model) and :func:`score` ``frames`` read from the object store.

    Raises:
        DataError: the model's classes differ from the configured ones.
    """
    scorer = open_model(settings, clients.registry, model)
    if list(scorer.meta.class_names) != list(settings.classes):
        raise DataError(f"model {model.label} classes {scorer.meta.class_names} differ from the configured "
                        f"classes {settings.classes}")
    if settings.model.tta.scoring:  # offline TTA: every view's boxes merged by model.nms (detloop.tta)
        from detloop.tta import TtaScorer

        scorer = TtaScorer(scorer, settings.model.tta.scales, settings.model.tta.flip)
    other = open_model(settings, clients.registry, committee) if committee is not None else None
    return score(frames, scorer, clients.store, settings.model, tta=tta, committee=other,
                 max_pixels=settings.sampling.max_image_pixels)


def resolve_model(settings: Settings, registry: Any, alias: str = "champion") -> Path:
    """The scoring artifact directory of ``models:/<model_name>@<alias>`` (fetched once per version).

    Raises:
        NotFound: no version holds the alias ("no champion yet"), with what to do.
        ServiceUnavailable: MLflow is not reachable (the message names its URL).
    """
    from tasks.registry import load_champion

    local = load_champion(settings, alias=alias, registry=registry)
    if local is None:
        raise NotFound(
            f"no {alias} model: registered model {settings.mlflow.model_name!r} has no @{alias} alias at "
            f"{settings.mlflow.tracking_uri}; train and promote one first, or pass --model PATH"
        )
    return local / "scoring"


# --------------------------------------------------------------------------------------------
# Prefetching reader
# --------------------------------------------------------------------------------------------
def _load_one(store: Any, ref: FrameRef, size: int, fast: bool = True,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, tiling: TileSpec | None = None,
              ) -> DecodedFrame | Quarantined:
    """Read and decode one frame. Bad data is quarantined with its reason; a service failure raises.

    Only the frame's own fault is quarantined: undecodable, empty or not an image, or gone from the bucket
    (:class:`NotFound`). An S3 outage (:class:`~detloop.errors.ServiceUnavailable`) or refusal propagates, so
    the scoring task fails, caches nothing, and a re-run scores the frame.
    """
    try:
        data = store.read_frame(ref.bucket, ref.key)
    except NotFound as err:
        return Quarantined(ref.bucket, ref.key, f"missing: {err}")
    got = load_frame_for_model(data, size, fast, max_pixels, tiling)
    if isinstance(got, str):
        return Quarantined(ref.bucket, ref.key, got)
    return DecodedFrame(ref, got)


def iter_decoded(
    store: Any, refs: Sequence[FrameRef], size: int, threads: int = 4, prefetch: int = 64, fast: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, tile_for: Callable[[FrameRef], TileSpec | None] | None = None,
) -> Iterator[DecodedFrame | Quarantined]:
    """Yield decoded frames (or quarantine records) in input order, reading up to ``prefetch`` ahead.

    ``tile_for``: how a frame is tiled (``ModelSettings.tile_spec`` of its camera), None: scored whole.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="detloop-read") as ex:
        pending: deque[Any] = deque()
        it = iter(refs)
        for ref in it:
            pending.append(ex.submit(_load_one, store, ref, size, fast, max_pixels, tile_for and tile_for(ref)))
            if len(pending) >= prefetch:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(ex.submit(_load_one, store, nxt, size, fast, max_pixels, tile_for and tile_for(nxt)))
            yield fut.result()


def iter_batches(items: Iterator[DecodedFrame | Quarantined], batch_size: int,
                 quarantine: list[Quarantined]) -> Iterator[list[DecodedFrame]]:
    """Group decoded frames into batches; quarantine records go to ``quarantine``."""
    batch: list[DecodedFrame] = []
    for it in items:
        if isinstance(it, Quarantined):
            quarantine.append(it)
            continue
        batch.append(it)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------
def scoring_decode(ms: ModelSettings) -> DecodeParams:
    """The decode of production scoring: ``model.scoring_conf_threshold`` keeps sub-threshold candidates;
    ``model.nms`` as everywhere."""
    return ms.decode_params(ms.scoring_conf_threshold, ms.scoring_max_candidates)


def frame_embeddings(emb: np.ndarray | None, frames: Sequence[FrameInput]) -> list[np.ndarray | None]:
    """One embedding per frame from the per-input rows of ``emb``: a tiled frame's is the mean of its tiles'."""
    if emb is None:
        return [None] * len(frames)
    out: list[np.ndarray | None] = []
    i = 0
    for f in frames:
        n = len(f.parts)
        out.append(np.asarray(emb[i] if n == 1 else emb[i : i + n].mean(axis=0), np.float32))
        i += n
    return out


def score_decoded(
    batch: Sequence[DecodedFrame],
    scorer: Scorer,
    ms: ModelSettings,
    tta: bool = False,
    committee: Scorer | None = None,
    timings: dict[str, float] | None = None,
) -> list[ScoredFrame]:
    """Score one batch of decoded frames (pure given the scorer)."""
    t = timings if timings is not None else {}
    inputs = [d.input for d in batch]
    x = to_tensors([m.image for f in inputs for m in f.parts], reuse=True)
    p = for_head(scoring_decode(ms), scorer.meta.head)
    t0 = time.perf_counter()
    raw, emb = scorer.infer(x)
    t1 = time.perf_counter()
    dets = decode_inputs(raw, inputs, p)
    t2 = time.perf_counter()
    t["infer"] = t.get("infer", 0.0) + (t1 - t0)
    t["nms"] = t.get("nms", 0.0) + (t2 - t1)
    tta_dets: list[Detections | None] = [None] * len(batch)
    com_dets: list[Detections | None] = [None] * len(batch)
    if tta:
        t3 = time.perf_counter()
        raw_f, _ = scorer.infer(np.ascontiguousarray(x[..., ::-1]))
        tta_dets = list(decode_inputs(flip_raw(raw_f, x.shape[-1]), inputs, p))
        t["tta"] = t.get("tta", 0.0) + (time.perf_counter() - t3)
    if committee is not None:
        t3 = time.perf_counter()
        raw_c, _ = committee.infer(x)
        com_dets = list(decode_inputs(raw_c, inputs, for_head(scoring_decode(ms), committee.meta.head)))
        t["committee"] = t.get("committee", 0.0) + (time.perf_counter() - t3)
    embs = frame_embeddings(emb, inputs)
    out = []
    for i, d in enumerate(batch):
        f = d.input
        out.append(ScoredFrame(
            frame=d.ref, width=f.width, height=f.height, detections=dets[i], embedding=embs[i],
            brightness=f.brightness, contrast=f.contrast, tta=tta_dets[i], committee=com_dets[i],
        ))
    return out


def score(
    refs: Sequence[FrameRef],
    scorer: Scorer,
    store: Any,
    ms: ModelSettings,
    tta: bool = False,
    committee: Scorer | None = None,
    read_threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ScoringResult:
    """Score frames streamed from S3 in batches of ``ms.batch_size`` with a prefetching reader.

    Args:
        refs: frames to score.
        scorer: the champion (see :func:`load_scorer`).
        store: ``S3Store``.
        ms: ``settings.model`` (batch size, thresholds).
        tta: also score the horizontally flipped frame (about 2x the inference cost).
        committee: the previous champion, scored on the same tensors (about 2x).
        read_threads: reader threads (default ``ms.read_threads``).
        max_pixels: frames declaring more pixels are quarantined undecoded (``sampling.max_image_pixels``).

    Returns:
        :class:`ScoringResult` with frames in input order (quarantined ones left out); its timings
        ``infer`` / ``nms`` / ``tta`` / ``committee`` are summed over workers, ``total`` is wall time.
    """
    size = int(scorer.meta.input_size)
    quarantine: list[Quarantined] = []
    t0 = time.perf_counter()
    tiled = ms.tiling.enabled or any(o.enabled for o in ms.tiling.cameras.values())
    reader = iter_decoded(store, refs, size, read_threads or ms.read_threads, prefetch=ms.batch_size * 3,
                          fast=ms.fast_decode, max_pixels=max_pixels,
                          tile_for=(lambda r: ms.tile_spec(r.camera)) if tiled else None)
    batches = enumerate(iter_batches(reader, ms.batch_size, quarantine))
    workers = inference_workers(ms, scorer, committee)
    done: dict[int, list[ScoredFrame]] = {}
    per_worker: list[dict[str, float]] = [{} for _ in range(workers)]
    lock = threading.Lock()

    def work(timings: dict[str, float]) -> None:
        while True:
            with lock:  # the reader is one iterator: workers take whole batches in turn
                item = next(batches, None)
            if item is None:
                return
            i, batch = item
            done[i] = score_decoded(batch, scorer, ms, tta, committee, timings)

    if workers == 1:
        work(per_worker[0])
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detloop-infer") as ex:
            for f in [ex.submit(work, t) for t in per_worker]:
                f.result()
    timings = {k: sum(t.get(k, 0.0) for t in per_worker) for k in set().union(*per_worker)}
    timings["total"] = time.perf_counter() - t0
    frames = [f for i in sorted(done) for f in done[i]]
    return ScoringResult(frames, quarantine, timings, scorer.name)


def inference_workers(ms: ModelSettings, scorer: Scorer, committee: Scorer | None = None) -> int:
    """Concurrent batches: ``ms.inference_workers`` (0: one per core), 1 when a scorer is not thread-safe."""
    if not getattr(scorer, "concurrent", False) or (committee is not None and not getattr(committee, "concurrent", False)):
        return 1
    return ms.inference_workers or max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Stored production predictions
# --------------------------------------------------------------------------------------------
def predictions_prefix(start: date | str, end: date | str, model_version: str) -> str:
    """``predictions/window=<start>_<end>/model=<version>/`` (end exclusive)."""
    return f"predictions/window={start}_{end}/model={model_version}/"


def write_predictions(store: Any, bucket: str, prefix: str, result: ScoringResult,
                      class_names: Sequence[str]) -> dict[str, str]:
    """Write ``predictions.jsonl`` (one row per frame), ``embeddings.npy`` (same row order) and ``meta.json``.

    Returns:
        The keys written.
    """
    store.ensure_bucket(bucket)
    lines = "\n".join(json.dumps(f.to_record(), separators=(",", ":")) for f in result.frames)
    keys = {"predictions": prefix + "predictions.jsonl", "meta": prefix + "meta.json"}
    store.put_bytes(bucket, keys["predictions"], (lines + "\n" if lines else "").encode(), "application/x-ndjson")
    emb = result.embeddings()
    if emb is not None:
        import io

        buf = io.BytesIO()
        np.save(buf, emb.astype(np.float16))
        keys["embeddings"] = prefix + "embeddings.npy"
        store.put_bytes(bucket, keys["embeddings"], buf.getvalue(), "application/octet-stream")
    store.put_json(bucket, keys["meta"], {
        "model": result.model, "class_names": list(class_names), "n_frames": len(result.frames),
        "n_quarantined": len(result.quarantined), "embeddings_dtype": "float16" if emb is not None else None,
        "quarantined": [q.to_dict() for q in result.quarantined],
    })
    return keys


def read_predictions(store: Any, bucket: str, prefix: str) -> list[ScoredFrame]:
    """Read back what :func:`write_predictions` wrote (for the drift monitor and re-selection)."""
    import io

    text = store.get_bytes(bucket, prefix + "predictions.jsonl").decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    emb = None
    if store.exists(bucket, prefix + "embeddings.npy"):
        emb = np.load(io.BytesIO(store.get_bytes(bucket, prefix + "embeddings.npy"))).astype(np.float32)
    return [ScoredFrame.from_record(r, None if emb is None else emb[i]) for i, r in enumerate(rows)]

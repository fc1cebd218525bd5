"""The registered model's code (MLflow "models from code"): a ``mlflow.pyfunc`` wrapper around
:class:`detloop.serving.Detector`.

MLflow executes this file when it loads a registered version (``mlflow.pyfunc.load_model``, ``mlflow models
serve``); the ``detloop`` package it imports is the copy stored with the model (``code/detloop``). Nothing in
detloop imports this module: registration points MLflow at the file (:func:`detloop.serving.build_pyfunc_model`).

Input: a DataFrame with a binary column ``image`` (JPEG/PNG bytes; base64 in JSON requests) and an optional
string column ``camera`` (a camera with its own tiling, as in scoring). Output: one row
per image with ``boxes`` (``[[x1, y1, x2, y2], ...]`` in frame pixels), ``class_ids``, ``class_names``,
``scores`` (model confidence in [0, 1]), ``width``, ``height`` and ``error`` (why an image was unusable).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class DetloopDetector(PythonModel):
    """Encoded images -> boxes, classes and scores, with detloop's scoring pre/post-processing."""

    def load_context(self, context: Any) -> None:
        from detloop.serving import Detector, ServingConfig

        self.detector = Detector(context.artifacts["scoring"], ServingConfig.read(context.artifacts["serving"]))

    # no type hints on predict: MLflow would read them as a schema (and warn); the signature is explicit
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import pandas as pd

        from detloop.serving import CAMERA_COLUMN, INPUT_COLUMN, OUTPUT_COLUMNS

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        images = [b if isinstance(b, bytes | bytearray) else bytes(b) for b in frame[INPUT_COLUMN].tolist()]
        cameras = ([c if isinstance(c, str) and c else None for c in frame[CAMERA_COLUMN].tolist()]
                   if CAMERA_COLUMN in frame.columns else None)
        return pd.DataFrame(self.detector.rows(images, params, cameras=cameras), columns=list(OUTPUT_COLUMNS))


mlflow.models.set_model(DetloopDetector())

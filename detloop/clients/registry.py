"""Thin MLflow tracking / registry client with user-facing errors naming the server URL.

Only network calls live here; the promotion rule is in :mod:`tasks.promotion` and the registry
workflow (register, promote, rollback) in :mod:`tasks.registry`. ``mlflow`` is imported lazily.

Every call runs once (MLflow's own HTTP retries are switched off: the flows are the one retry layer)
and its failure is translated by type and status code: no connection, a timeout, 5xx or 429 ->
:class:`ServiceUnavailable`; ``RESOURCE_DOES_NOT_EXIST`` -> :class:`NotFound`; any other 4xx ->
:class:`ServiceRejected`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from detloop.errors import NotFound, ServiceError, ServiceRejected, http_error, unreachable
from detloop.settings import Settings

T = TypeVar("T")

# The experiment is a model-training one (MLflow 3's GenAI view shows traces, "No data available"); its
# description is the note MLflow shows on the experiment page. MLflow 3.17's UI picks the view from a sidebar
# switch it keeps in the browser (default GenAI) or from the URL's ``workflowType``: detloop's links carry
# ``UI_VIEW``; the tag sets the experiment's type where the switch is not shown.
UI_VIEW = "workflowType=machine_learning"
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "detloop: one run per training (bootstrap or a round's fine-tune) with params, per-epoch metrics, "
        "train.log and plots (curves, confusion matrix, PR curves, golden frames). Registered versions are "
        "MLflow pyfunc models (encoded images in, boxes out): `mlflow.pyfunc.load_model('models:/<name>@champion')`."
    ),
}


def _connection_failure(err: BaseException) -> BaseException | None:
    """The connection error or timeout in ``err``'s cause/context chain, if any (MLflow wraps them)."""
    import requests

    seen = 0
    cur: BaseException | None = err
    while cur is not None and seen < 10:
        if isinstance(cur, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def classify_mlflow_error(err: BaseException, url: str, what: str) -> ServiceError | NotFound | None:
    """The detloop error for an exception of an MLflow call, or None when it is not a service failure (a bug)."""
    import requests

    if isinstance(err, ServiceError | NotFound):
        return err
    conn = _connection_failure(err)
    if conn is not None:
        return unreachable("MLflow", url, what, conn)
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(err, MlflowException):
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return NotFound(f"MLflow at {url}: not found on {what}: {err.message[:300]}")
        return http_error("MLflow", url, int(err.get_http_status_code()), what, err.message)
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return http_error("MLflow", url, int(err.response.status_code), what, err.response.text)
    return None


def call_mlflow(fn: Callable[[], T], what: str, url: str) -> T:
    """Call ``fn`` once; a failure of the MLflow server is raised as a detloop error naming ``url``."""
    try:
        return fn()
    except Exception as err:
        mapped = classify_mlflow_error(err, url, what)
        if mapped is None or mapped is err:
            raise
        raise mapped from err


class RegistryClient:
    """MLflow tracking + model registry for one experiment and one registered model name."""

    def __init__(self, settings: Settings, experiment: str | None = None, model_name: str | None = None):
        self.url = settings.mlflow.tracking_uri
        self.experiment_name = experiment or settings.mlflow.experiment
        self.model_name = model_name or settings.mlflow.model_name
        self._client: Any = None
        self._experiment_id: str | None = None

    # ---- plumbing ---------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import os

            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # the flows are the one retry layer
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.url, registry_uri=self.url)
        return self._client

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return call_mlflow(fn, what, self.url)

    def ping(self) -> None:
        """Raise :class:`ServiceUnavailable` (or another :class:`ServiceError`) when the server does not answer."""
        import requests

        def _get() -> None:
            r = requests.get(self.url.rstrip("/") + "/health", timeout=5)
            r.raise_for_status()

        self.call("check health", _get)

    @property
    def experiment_id(self) -> str:
        """The experiment's id (created on first use), tagged to open in MLflow's model-training view."""
        if self._experiment_id is None:
            exp = self.call("get experiment", lambda: self.client.get_experiment_by_name(self.experiment_name))
            if exp is None:
                try:
                    self._experiment_id = self.call(
                        "create experiment", lambda: self.client.create_experiment(
                            self.experiment_name, tags=dict(EXPERIMENT_TAGS)))
                except ServiceRejected:  # created concurrently (RESOURCE_ALREADY_EXISTS)
                    exp = self.call("get experiment", lambda: self.client.get_experiment_by_name(self.experiment_name))
                    if exp is None:
                        raise
            if exp is not None:
                self._experiment_id = str(exp.experiment_id)
                missing = {k: v for k, v in EXPERIMENT_TAGS.items() if (exp.tags or {}).get(k) is None}
                for k, v in missing.items():  # experiments created before the tags existed
                    self.call("set experiment tag",
                              lambda k=k, v=v: self.client.set_experiment_tag(self._experiment_id, k, v))
        return str(self._experiment_id)

    def experiment_url(self) -> str:
        """The experiment's page in the MLflow UI, in its model-training view."""
        return f"{self.url.rstrip('/')}/#/experiments/{self.experiment_id}?{UI_VIEW}"

    def run_url(self, run_id: str) -> str:
        """A run's page in the MLflow UI, in its model-training view."""
        return f"{self.url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}?{UI_VIEW}"

    def version_url(self, version: str | int) -> str:
        """A model version's page in the MLflow UI."""
        return f"{self.url.rstrip('/')}/#/models/{self.model_name}/versions/{version}?{UI_VIEW}"

    # ---- runs -------------------------------------------------------------------------------
    def find_runs(self, filter_string: str, max_results: int = 10) -> list[Any]:
        return list(self.call("search runs", lambda: self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=max_results,
            order_by=["attributes.start_time DESC"])))

    def create_run(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.call("create run", lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags))
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.call("log params", lambda i=i: self.client.log_batch(run_id, params=items[i : i + 100]))

    def log_metrics(self, run_id: str, rows: Sequence[tuple[str, float, int]]) -> None:
        """``(key, value, step)`` rows, in batches."""
        import math

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k.replace("(", "_").replace(")", ""), float(v), ts, int(s))
                 for k, v, s in rows if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.call("log metrics", lambda i=i: self.client.log_batch(run_id, metrics=items[i : i + 500]))

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self.call("set run tags", lambda: self.client.log_batch(run_id, tags=items))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.call("upload artifact", lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.call("upload artifact", lambda: self.client.log_text(run_id, text, artifact_file))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.call("end run", lambda: self.client.set_terminated(run_id, status))

    def download_run_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.call("download artifact", lambda: self.client.download_artifacts(run_id, path, str(dst))))

    # ---- registry ---------------------------------------------------------------------------
    def ensure_registered_model(self) -> None:
        try:
            self.call("get registered model", lambda: self.client.get_registered_model(self.model_name))
        except NotFound:
            try:
                self.call("create registered model", lambda: self.client.create_registered_model(self.model_name))
            except ServiceRejected:  # created concurrently (RESOURCE_ALREADY_EXISTS)
                self.call("get registered model", lambda: self.client.get_registered_model(self.model_name))

    def versions(self, filter_extra: str = "") -> list[Any]:
        """All versions of the model, newest first (aliases filled in)."""
        flt = f"name='{self.model_name}'" + (f" and {filter_extra}" if filter_extra else "")
        vs = list(self.call("search model versions", lambda: self.client.search_model_versions(flt, max_results=1000)))
        out = [self.get_version(v.version) for v in vs]  # search results may omit aliases
        return sorted(out, key=lambda v: int(v.version), reverse=True)

    def get_version(self, version: str | int) -> Any:
        return self.call("get model version", lambda: self.client.get_model_version(self.model_name, str(version)))

    def version_for_run(self, run_id: str) -> Any | None:
        vs = self.versions(f"run_id='{run_id}'")
        return vs[0] if vs else None

    def aliases(self) -> dict[str, str]:
        """``{alias: version}`` of the registered model (empty when the model is not registered yet)."""
        try:
            rm = self.call("get registered model", lambda: self.client.get_registered_model(self.model_name))
        except NotFound:
            return {}
        raw = getattr(rm, "aliases", None) or {}
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        return {str(a.alias): str(a.version) for a in raw}

    def version_by_alias(self, alias: str) -> Any | None:
        """The version holding ``alias``, or None (no such alias, or no such registered model yet).

        Read through the registered model's alias list: MLflow answers an unknown alias with a generic
        INVALID_PARAMETER_VALUE, which cannot be told from a bad request without reading its text.
        """
        version = self.aliases().get(alias)
        if version is None:
            return None
        try:
            return self.get_version(version)
        except NotFound:  # the alias moved or the version was deleted in between
            return None

    def set_alias(self, alias: str, version: str | int) -> None:
        self.call(f"set alias {alias}",
                  lambda: self.client.set_registered_model_alias(self.model_name, alias, str(version)))

    def delete_alias(self, alias: str) -> None:
        try:
            self.call(f"delete alias {alias}", lambda: self.client.delete_registered_model_alias(self.model_name, alias))
        except NotFound:
            pass

    def set_version_tags(self, version: str | int, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.call("set version tag",
                      lambda k=k, v=v: self.client.set_model_version_tag(self.model_name, str(version), k, str(v)))

    def describe(self, version: str | int | None, text: str) -> None:
        """Set the description of a model version (or, with ``version`` None, of the registered model)."""
        if version is None:
            self.ensure_registered_model()
            self.call("describe registered model",
                      lambda: self.client.update_registered_model(self.model_name, description=text))
            return
        self.call("describe model version",
                  lambda: self.client.update_model_version(self.model_name, str(version), description=text))

    def register_logged_model(self, run_id: str, local_dir: Path, name: str, tags: dict[str, str],
                              params: dict[str, str], serving: Any = None, description: str | None = None) -> Any:
        """LoggedModel route (``register_model('runs:/...')`` fails for plain files in MLflow 3).

        With ``serving`` (a :class:`detloop.serving.ServingConfig`) the files are first made an MLflow pyfunc
        model (:func:`detloop.serving.build_pyfunc_model`: ``MLmodel``, signature, input example, code,
        requirements; the scoring artifact under ``artifacts/scoring``), so the version loads with
        ``mlflow.pyfunc.load_model`` and serves with ``mlflow models serve``. ``initialize`` -> upload every
        file -> finalize READY -> model version. A failed upload finalizes the LoggedModel as FAILED and
        registers nothing.
        """
        upload = Path(local_dir)
        if serving is not None:
            from detloop.serving import build_pyfunc_model

            upload = build_pyfunc_model(upload, upload.parent / f"{upload.name}-pyfunc", serving)
        lm = self.call("create logged model", lambda: self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id, tags=tags, params=params,
            model_type="detloop-detector" if serving is not None else None))
        model_id = lm.model_id
        try:
            self.call("upload model files", lambda: self.client.log_model_artifacts(model_id, str(upload)))
        except Exception:
            try:
                self.client.finalize_logged_model(model_id, "FAILED")
            finally:
                raise
        self.call("finalize logged model", lambda: self.client.finalize_logged_model(model_id, "READY"))
        self.ensure_registered_model()
        return self.call("create model version", lambda: self.client.create_model_version(
            self.model_name, source=f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id,
            description=description))

    def download_version(self, version: Any, dst: Path) -> Path:
        """Download every file of a model version into ``dst``."""
        import shutil

        import mlflow.artifacts

        dst.mkdir(parents=True, exist_ok=True)
        # resolve through OUR client: a models:/ URI would consult the process-global registry URI
        uri = self.call("resolve model version files", lambda: self.client.get_model_version_download_uri(
            self.model_name, str(version.version)))
        # MLflow names the download after the URI's last segment ("artifacts", which a pyfunc model also has
        # inside): download beside ``dst`` and move the files in
        tmp = dst.parent / f".{dst.name}.download"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        got = Path(self.call("download model version", lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(tmp), tracking_uri=self.url)))
        for child in list(got.iterdir()):
            child.rename(dst / child.name)
        shutil.rmtree(tmp)
        return dst

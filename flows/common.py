"""What every detloop flow shares: settings per run, retry policy for network calls, reports.

Retries are for network calls only (S3, Label Studio, MLflow): a bug in our code is not retried.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from detloop.errors import is_retryable
from detloop.settings import Settings, load_settings
from flows.params import _Params

# The one retry layer of detloop: Prefect task retries, and only when a service was unavailable
# (clients raise ServiceUnavailable for refused connections, timeouts, 5xx and 429, and never retry
# themselves). Defaults of the task decorators; a run applies its config's `prefect.retries` and
# `prefect.retry_delays_seconds` with `retrying`. The delays outlast a restart of any stack service
# (3-35 s measured).
NETWORK_RETRIES = 3
NETWORK_RETRY_DELAYS = [2, 10, 30]


def retry_on_network(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the task failed with :class:`ServiceUnavailable`.

    A rejected request, bad data, a busy lock or a bug is never retried.
    """
    exc = getattr(state, "data", None)
    if isinstance(exc, BaseException):
        return is_retryable(exc)
    try:
        state.result()
    except BaseException as err:  # a failed state re-raises its exception
        return is_retryable(err)
    return False


# Deployments, named after what they do (``<flow>/<deployment>``; flows/serve.py registers them)
DEPLOYMENTS = {
    "select": "select-for-labeling/open-weekly-round",
    "watch": "watch-rounds/close-finished-rounds",
    "retrain": "retrain-and-promote/retrain-on-round-completed",
    "bootstrap": "bootstrap/train-first-champion",
    "promote": "promote/make-a-version-champion",
    "rollback": "rollback/restore-previous-champion",
    "drift": "drift-monitor/check-production-daily",
    "drift_round": "select-for-labeling/open-drift-round",
}

EVENT_ROUND_COMPLETED = "detloop.annotation.round.completed"
EVENT_ROUND_READY = "detloop.annotation.round.ready"
EVENT_MODEL_PROMOTED = "detloop.model.promoted"
EVENT_GATE_FAILED = "detloop.model.gate_failed"
EVENT_DRIFT_DETECTED = "detloop.drift.detected"


def run_name(prefix: str, *keys: str, default: Any = None) -> Any:
    """A ``flow_run_name`` callable: ``prefix`` and the first of ``keys`` the run's parameters hold.

    Parameters given as one model (``params``) are looked into too: ``run_name("retrain", "round_id")``
    names a run ``retrain detloop-2026-01-12``. ``default`` (a callable) names the value when none is set
    (``select`` runs without ``as_of`` select for today).
    """

    def name() -> str:
        from prefect.runtime import flow_run

        p = dict(flow_run.parameters or {})
        inner = p.get("params")
        if inner is not None:
            p.update(inner if isinstance(inner, dict) else getattr(inner, "__dict__", {}))
        value = next((p[k] for k in keys if p.get(k) not in (None, "")), None)
        if value is None and default is not None:
            value = default()
        return f"{prefix} {value}" if value is not None else prefix

    return name


def today_utc() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).date().isoformat()


def now_utc_minute() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M")


def prefect_ui_url(settings: Settings) -> str:
    """The Prefect UI's base URL (the API URL without ``/api``)."""
    return settings.prefect.api_url.rstrip("/").removesuffix("/api")


def current_flow_run_links(settings: Settings) -> dict[str, str]:
    """Tags linking an MLflow run to the current Prefect flow run (empty outside a run)."""
    from prefect.runtime import flow_run

    fid = flow_run.get_id()
    if not fid:
        return {}
    url = f"{prefect_ui_url(settings)}/runs/flow-run/{fid}"
    return {"detloop.prefect.flow_run_id": str(fid), "detloop.prefect.flow_run_name": str(flow_run.get_name() or ""),
            "detloop.prefect.flow_run_url": url, "mlflow.source.type": "JOB",
            "mlflow.source.name": f"prefect flow run {flow_run.get_flow_name()}: {flow_run.get_name()} ({url})"}


def announce_round_completed(config: str | None) -> Any:
    """``announce(RoundCompleted)`` for :func:`tasks.watch.watch_rounds`: emits Prefect's round-completed event.

    The event id is the round's deterministic id (consumers dedupe on it); ``config`` travels in the payload
    so the triggered retrain runs with the same settings.
    """
    import uuid

    from prefect.events import emit_event

    def announce(done: Any) -> Any:
        return emit_event(
            event=EVENT_ROUND_COMPLETED,
            resource={"prefect.resource.id": f"detloop.round.{done.round_id}", "prefect.resource.name": done.round_id},
            payload={"round_id": done.round_id, "status": done.status, "partial": done.partial,
                     "model_version": done.model_version, **done.counts, "config": config or ""},
            id=uuid.UUID(done.event_id),
        )

    return announce


def retrain_waiting() -> Any:
    """``round_id -> bool`` for :func:`tasks.watch.watch_rounds`: whether a ``retrain-and-promote`` run of that
    round is scheduled or pending in Prefect (waiting for a worker: not dead, so not re-announced)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    def waiting(round_id: str) -> bool:
        with get_client(sync_client=True) as client:
            try:
                dep = client.read_deployment_by_name(DEPLOYMENTS["retrain"])
            except ObjectNotFound:  # not deployed (a flow run by hand): nothing can be waiting on it
                return False
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING]))),
                limit=200)
        return any((r.parameters.get("params") or {}).get("round_id") == round_id for r in runs)

    return waiting


def settings_for(params: _Params) -> Settings:
    """Settings of one run: the config file, environment overrides, then the run's parameters."""
    return run_settings(params.config, params.overrides())


def run_settings(config: str | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from ``config`` (None: ``$DETLOOP_CONFIG`` or the default), environment, ``overrides``;
    secret blocks filled and every library switched to offline mode."""
    from detloop.offline import apply_offline_env

    s = load_settings(config or None, overrides=overrides or None)
    s.fill_secret_blocks(load_secret_block)
    apply_offline_env(s)
    return s


def retrying(t: Any, settings: Settings) -> Any:
    """Prefect task ``t`` with the configured retry policy (``prefect.retries``, ``prefect.retry_delays_seconds``).

    Only :class:`ServiceUnavailable` is retried, whatever the policy.
    """
    p = settings.prefect
    return t.with_options(retries=p.retries, retry_delay_seconds=list(p.retry_delays_seconds),
                          retry_condition_fn=retry_on_network)


def load_secret_block(name: str) -> Any:
    """The value of Prefect Secret block ``name`` (for :meth:`Settings.fill_secret_blocks`)."""
    from prefect.blocks.system import Secret

    from detloop.errors import ConfigError

    try:
        return Secret.load(name).get()
    except ValueError as err:  # no such block
        raise ConfigError(f"cannot load Prefect Secret block {name!r}: {err}") from err


def _md_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if v is None:
        return "-"
    return str(v).replace("|", "\\|")


def md_table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A markdown table of dict rows (for Prefect artifacts and the CLI). Keep it to a few columns: Prefect's
    artifact page cuts wide tables off; a single record reads better as :func:`md_fields`."""
    rows = list(rows)
    if not rows:
        return "_(none)_\n"
    cols = list(columns) if columns is not None else list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    out += ["| " + " | ".join(_md_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def md_fields(record: dict[str, Any], keys: Iterable[str] | None = None) -> str:
    """One record as a two-column ``field | value`` table: never wider than the page."""
    keys = list(keys) if keys is not None else list(record)
    out = ["| field | value |", "| --- | --- |"]
    out += [f"| {k} | {_md_cell(record.get(k))} |" for k in keys if k in record]
    return "\n".join(out) + "\n"


def publish_report(key: str, markdown: str, description: str) -> None:
    """Attach a markdown artifact to the current flow run (no-op outside a run)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_markdown_artifact(key=key, markdown=markdown, description=description)


def notify(event: str, resource_id: str, payload: dict[str, Any], message: str, event_id: Any = None) -> None:
    """Tell people: a Prefect event (automations turn it into Slack/e-mail) plus a log line.

    The local default is the log and the run's artifact; with ``prefect.notification_block`` the runner
    creates automations that send ``message`` through that block (:mod:`flows.notifications`). ``event_id``
    (a UUID) makes the event deterministic, so a re-run emits the same event and consumers can dedupe it.
    """
    from prefect import get_run_logger
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": resource_id}, payload={**payload, "message": message},
               **({"id": event_id} if event_id is not None else {}))
    try:
        get_run_logger().info("%s: %s", event, message)
    except Exception:  # outside a run context there is no run logger
        print(f"{event}: {message}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)


def make_task_runner(settings: Settings) -> Any:
    """The configured Prefect task runner: threads, or Dask (an existing scheduler or a temporary local cluster)."""
    from detloop.settings import ConfigError

    p = settings.prefect
    if p.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:
            raise ConfigError(
                "prefect.task_runner: dask needs prefect-dask; install the dask extra: pip install -e '.[dask]'"
            ) from err
        if p.dask_address:
            return DaskTaskRunner(address=p.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": p.max_workers, "threads_per_worker": 1,
                                              "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=p.max_workers)


def chunks(items: Sequence[Any], settings: Settings) -> list[list[Any]]:
    """Scoring chunks: one with the thread runner, ``prefect.score_chunk_frames`` each on Dask."""
    size = settings.prefect.score_chunk_frames if settings.prefect.task_runner == "dask" else max(1, len(items))
    return [list(items[i : i + size]) for i in range(0, len(items), size)] or [[]]

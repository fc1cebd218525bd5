"""The runner: register detloop's deployments with the Prefect server and serve them.

Without a process serving the deployments, schedules and event triggers never execute: the local
stack starts this as its ``runner`` service (``python -m flows.serve --config ...``); by hand it is
``detloop serve``. With ``--work-pool`` the same deployments are registered against a work pool
(e.g. Kubernetes) instead of being served in this process.

Deployments, named after what they do (``flows.common.DEPLOYMENTS``):

=====================================================  =====================================================
``select-for-labeling/open-weekly-round``              cron ``prefect.weekly_cron`` (default Monday 03:00)
``watch-rounds/close-finished-rounds``                 event ``detloop.annotation.round.ready``; checks every
                                                       ``prefect.watch_interval_seconds`` while a round is
                                                       open, one run an hour; a daily safety-net cron
``retrain-and-promote/retrain-on-round-completed``     event ``detloop.annotation.round.completed``
``bootstrap/train-first-champion``                     by hand: first champion from the seed dataset version
``promote/make-a-version-champion``                    by hand, with a reason
``rollback/restore-previous-champion``                 by hand, with a reason
``drift-monitor/check-production-daily``               cron ``drift.cron`` (default 04:00 every day)
``select-for-labeling/open-drift-round``               event ``detloop.drift.detected`` (one round per episode)
=====================================================  =====================================================

The watcher does not run on a per-minute schedule: Prefect keeps at least an hour of an interval schedule's
runs scheduled ahead (``PREFECT_API_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME``), 60 runs at one minute, and a
run a minute piles up 1,440 runs a day. Instead a round opening starts a watch run that checks every
``prefect.watch_interval_seconds`` while a round is open; after an hour it schedules the next run (idempotent per
time slot) and ends, and with no round open it ends without a successor: one run an hour while rounds are open,
none otherwise, at most one scheduled ahead. The daily cron restarts the chain if it ever broke (a runner
down for longer than Prefect keeps late runs). A run by hand (``detloop run watch``) checks once.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from detloop.settings import Settings, load_settings

# No deployment concurrency limits: Prefect 3.8 keeps their leases in the server's memory, so a run
# that holds a slot when the server restarts (`stack down` / `up`) leaks the slot forever. One retrain per
# round, one training and one promotion at a time are enforced by leases in the object store instead
# (tasks/leases.py), which hold across hosts and which a crashed holder loses after locks.lease_seconds.

WATCH_SAFETY_CRON = "30 4 * * *"  # daily: restarts the watch chain if it broke


def _name(key: str) -> str:
    from flows.common import DEPLOYMENTS

    return DEPLOYMENTS[key].split("/", 1)[1]


def build_deployments(settings: Settings) -> list[Any]:
    """RunnerDeployments for every flow (module entrypoints, schema-enforced parameters, configured defaults)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from flows.common import EVENT_ROUND_COMPLETED, EVENT_ROUND_READY
    from flows.loop import (
        bootstrap,
        promote,
        retrain_and_promote,
        rollback,
        select_for_labeling,
        watch_rounds,
    )
    from flows.params import configured_defaults

    common: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "enforce_parameter_schema": True}
    retrain_trigger = DeploymentEventTrigger(
        name="round-completed-starts-retrain",
        expect={EVENT_ROUND_COMPLETED},
        match={"prefect.resource.id": "detloop.round.*"},
        parameters={"params": {"round_id": "{{ event.payload.round_id }}", "config": "{{ event.payload.config }}"}},
    )
    watch_trigger = DeploymentEventTrigger(
        name="round-ready-starts-watching",
        expect={EVENT_ROUND_READY},
        match={"prefect.resource.id": "detloop.round.*"},
        parameters={"params": {"config": "{{ event.payload.config }}", "follow": True}},
    )
    return [
        select_for_labeling.to_deployment(
            _name("select"), cron=settings.prefect.weekly_cron, tags=["detloop", "weekly"],
            description="Sample the production window, score with the champion, select, open a Label Studio round.",
            parameters=configured_defaults("select-for-labeling", settings), **common,
        ),
        watch_rounds.to_deployment(
            _name("watch"), cron=WATCH_SAFETY_CRON, triggers=[watch_trigger], tags=["detloop"],
            parameters={"params": {"follow": True}},
            description=(f"Progress of open rounds; closes finished or overdue ones and emits "
                         f"{EVENT_ROUND_COMPLETED} once per round. Starts when a round opens and checks every "
                         f"{settings.prefect.watch_interval_seconds} s while one is open, one run an hour (daily at "
                         "04:30 UTC as a safety net)."),
            **common,
        ),
        retrain_and_promote.to_deployment(
            _name("retrain"), triggers=[retrain_trigger], tags=["detloop", "training"],
            description="Labels of a round -> dataset version -> fine-tune -> evaluate -> register -> gate -> promote.",
            **common,
        ),
        bootstrap.to_deployment(
            _name("bootstrap"), tags=["detloop", "training"],
            description="Train the first champion from the model YAML on the seed dataset version.",
            parameters=configured_defaults("bootstrap", settings), **common,
        ),
        promote.to_deployment(
            _name("promote"), tags=["detloop", "registry"],
            description="Make a registered version champion (with a reason; override records who and why, and "
                        "records a champion someone set in MLflow's UI).", **common,
        ),
        rollback.to_deployment(
            _name("rollback"), tags=["detloop", "registry"],
            description="Restore previous-champion as champion (with a reason).", **common,
        ),
        *drift_deployments(settings, common),
    ]


def payload_param(name: str, mapping: bool = False) -> dict[str, Any]:
    """A trigger's parameter from the event's payload field ``name``, as JSON (a list or a mapping keeps its type);
    ``mapping``: an optional mapping, ``{}`` when the payload lacks it (an event announced before the field existed)
    or holds null. Not null: the server checks a run's parameters against the deployment's schema, where the field
    is a mapping, and refuses to create the run ("None is not of type 'object'")."""
    fallback = " | default({}, true)" if mapping else ""
    return {"__prefect_kind": "json",
            "value": {"__prefect_kind": "jinja", "template": "{{ event.payload." + name + fallback + " | tojson }}"}}


def drift_deployments(settings: Settings, common: dict[str, Any]) -> list[Any]:
    """``drift-monitor/check-production-daily`` (cron ``drift.cron``) and ``select-for-labeling/open-drift-round``, which the
    ``detloop.drift.detected`` event starts: one round per episode, on its cameras and days."""
    from prefect.events import DeploymentEventTrigger

    from flows.common import EVENT_DRIFT_DETECTED
    from flows.drift import drift_monitor
    from flows.loop import select_for_labeling
    from flows.params import configured_defaults

    on_drift = DeploymentEventTrigger(
        name="drift-detected-starts-targeted-round",
        expect={EVENT_DRIFT_DETECTED},
        match={"prefect.resource.id": "detloop.drift.*"},
        parameters={"params": {"config": "{{ event.payload.config }}", "as_of": "{{ event.payload.as_of }}",
                               "episode_id": "{{ event.payload.episode_id }}", "budget": payload_param("budget"),
                               "cameras": payload_param("cameras"), "dates": payload_param("dates"),
                               "camera_weights": payload_param("camera_weights", mapping=True),
                               "camera_dates": payload_param("camera_dates", mapping=True)}},
    )
    return [
        drift_monitor.to_deployment(
            _name("drift"), cron=settings.drift.cron, tags=["detloop", "monitoring"],
            description="Production vs the champion's reference, per camera and day; live accuracy; drift episodes "
            "(each announced once, starting one targeted round).",
            parameters=configured_defaults("drift-monitor", settings), **common,
        ),
        select_for_labeling.to_deployment(
            _name("drift_round"), triggers=[on_drift], tags=["detloop", "drift"],
            description="A drift episode's targeted round: its cameras and days, opened even while a weekly round is open.",
            **common,
        ),
    ]


def remove_stale_deployments(deployments: list[Any]) -> list[str]:
    """Delete deployments of detloop's flows (tag ``detloop``) that this runner no longer serves.

    An upgrade that renames deployments (``weekly`` -> ``open-weekly-round``, the three ``manual`` ...) would
    otherwise leave the old ones in the UI, and their schedules would keep creating runs nobody serves.

    Returns:
        The ``flow/deployment`` names deleted.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    current = {d.full_name for d in deployments}
    flows = sorted({d.flow_name for d in deployments if d.flow_name})
    deleted = []
    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=flows)))}
        for dep in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=flows))):
            full = f"{names.get(dep.flow_id, '?')}/{dep.name}"
            if "detloop" in (dep.tags or []) and full not in current:
                client.delete_deployment(dep.id)
                deleted.append(full)
    return deleted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="Config YAML (default $DETLOOP_CONFIG or configs/local.yaml)")
    parser.add_argument("--work-pool", default=None, help="Register against this work pool instead of serving here.")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    os.environ["DETLOOP_CONFIG"] = str(settings.source)
    os.environ.setdefault("PREFECT_API_URL", settings.prefect.api_url)
    from detloop.offline import apply_offline_env

    apply_offline_env(settings)
    deployments = build_deployments(settings)
    from flows.notifications import ensure_notifications

    for name in ensure_notifications(settings):
        print(f"notifications: automation {name!r} is set")
    for name in remove_stale_deployments(deployments):
        print(f"deployment {name!r} removed: this version of detloop no longer serves it")
    if args.work_pool:
        from prefect import deploy

        deploy(*deployments, work_pool_name=args.work_pool, build=False, push=False)
        return
    from prefect import serve

    serve(*deployments, limit=8, print_starting_message=True)


if __name__ == "__main__":
    sys.exit(main())

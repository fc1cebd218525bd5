"""The runner: register detloop's deployments with the Prefect server and serve them.

Without a process serving the deployments, schedules and event triggers never execute: the local
stack starts this as its ``runner`` service (``python -m flows.serve --config ...``); by hand it is
``detloop serve``. With ``--work-pool`` the same deployments are registered against a work pool
(e.g. Kubernetes) instead of being served in this process.

Deployments:

==========================================  ===========================================================
``select-for-labeling/weekly``              cron ``prefect.weekly_cron`` (default Monday 03:00)
``watch-rounds/interval``                   every ``prefect.watch_interval_seconds``
``retrain-and-promote/on-round-completed``  trigger: event ``detloop.annotation.round.completed``
``bootstrap/manual``                        manual: first champion from the seed dataset version
``promote/manual``, ``rollback/manual``     manual, with a reason
==========================================  ===========================================================

(``drift-monitor/daily`` joins this list with the drift issue: add it in :func:`build_deployments`.)
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


def build_deployments(settings: Settings) -> list[Any]:
    """RunnerDeployments for every flow (module entrypoints, schema-enforced parameters)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from flows.common import EVENT_ROUND_COMPLETED
    from flows.loop import (
        bootstrap,
        promote,
        retrain_and_promote,
        rollback,
        select_for_labeling,
        watch_rounds,
    )

    common: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "enforce_parameter_schema": True}
    trigger = DeploymentEventTrigger(
        name="round-completed-starts-retrain",
        expect={EVENT_ROUND_COMPLETED},
        match={"prefect.resource.id": "detloop.round.*"},
        parameters={"params": {"round_id": "{{ event.payload.round_id }}", "config": "{{ event.payload.config }}"}},
    )
    return [
        select_for_labeling.to_deployment(
            "weekly", cron=settings.prefect.weekly_cron, tags=["detloop", "weekly"],
            description="Sample the production window, score with the champion, select, open a Label Studio round.",
            **common,
        ),
        watch_rounds.to_deployment(
            "interval", interval=settings.prefect.watch_interval_seconds, tags=["detloop"],
            description="Progress of open rounds; emits detloop.annotation.round.completed once per round.",
            **common,
        ),
        retrain_and_promote.to_deployment(
            "on-round-completed", triggers=[trigger], tags=["detloop", "training"],
            description="Labels of a round -> dataset version -> fine-tune -> evaluate -> register -> gate -> promote.",
            **common,
        ),
        bootstrap.to_deployment(
            "manual", tags=["detloop", "training"],
            description="Train the first champion from the model YAML on the seed dataset version.", **common,
        ),
        promote.to_deployment(
            "manual", tags=["detloop", "registry"],
            description="Make a registered version champion (with a reason; override records who and why).", **common,
        ),
        rollback.to_deployment(
            "manual", tags=["detloop", "registry"],
            description="Restore previous-champion as champion (with a reason).", **common,
        ),
    ]


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
    if args.work_pool:
        from prefect import deploy

        deploy(*deployments, work_pool_name=args.work_pool, build=False, push=False)
        return
    from prefect import serve

    serve(*deployments, limit=8, print_starting_message=True)


if __name__ == "__main__":
    sys.exit(main())

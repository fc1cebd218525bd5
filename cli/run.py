"""Commands that run the loop's flows: ``serve``, ``bootstrap``, ``run ...``, ``demo``.

``detloop run X`` runs a flow in this process (tracked by the Prefect server in the config);
``--deployment`` instead asks the runner to run the deployment, as the UI's "Run" button does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import ConfigOpt, get_settings, use_prefect
from flows.common import DEPLOYMENTS

run_app = typer.Typer(help="Run one step of the loop now (in this process, or via its deployment).",
                      no_args_is_help=True)
loop_app = typer.Typer()  # bootstrap, serve, demo: top-level commands of `detloop`


def _prefect_env(config: Path | None) -> Any:
    s = get_settings(config)
    use_prefect(s, config)
    return s


def _go(flow_name: str, deployment: str, params: dict[str, Any], via_deployment: bool, config: Path | None) -> None:
    import json

    _prefect_env(config)
    params = {k: v for k, v in params.items() if v is not None}
    if via_deployment:
        from prefect.deployments import run_deployment

        fr = run_deployment(deployment, parameters={"params": params}, timeout=0)
        typer.echo(f"created flow run {fr.name} ({fr.id}) of {deployment}; watch it in the Prefect UI")
        return
    import flows.loop as loop
    from flows import params as P

    model = {"select-for-labeling": P.SelectParams, "watch-rounds": P.WatchParams,
             "retrain-and-promote": P.RetrainParams, "bootstrap": P.BootstrapParams}[flow_name]
    fn = {"select-for-labeling": loop.select_for_labeling, "watch-rounds": loop.watch_rounds,
          "retrain-and-promote": loop.retrain_and_promote, "bootstrap": loop.bootstrap}[flow_name]
    result = fn(model(**params))
    typer.echo(json.dumps(result, indent=1, default=str))


Deployment = Annotated[bool, typer.Option("--deployment", help="Run via the served deployment instead of here.")]


@run_app.command("select")
def run_select(
    as_of: Annotated[str | None, typer.Option(help="'This week' date (ISO); default today.")] = None,
    budget: Annotated[int | None, typer.Option(min=1, help="Frames to label (control included).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Uncertainty strategy name.")] = None,
    camera: Annotated[list[str] | None, typer.Option(help="Only this camera (repeatable).")] = None,
    force_new_round: Annotated[bool, typer.Option(help="Open a round even if one is still open.")] = False,
    deployment: Deployment = False,
    config: ConfigOpt = None,
) -> None:
    """Sample the window ending at --as-of, score with the champion, select, push a Label Studio round."""
    _go("select-for-labeling", DEPLOYMENTS["select"],
        {"as_of": as_of, "budget": budget, "strategy": strategy, "cameras": camera or None,
         "force_new_round": force_new_round or None}, deployment, config)


@run_app.command("watch")
def run_watch(
    now: Annotated[str | None, typer.Option(help="Clock for deadlines (ISO datetime); default now.")] = None,
    deployment: Deployment = False,
    config: ConfigOpt = None,
) -> None:
    """Check open rounds; close finished/overdue ones and emit their completion event once."""
    _go("watch-rounds", DEPLOYMENTS["watch"], {"now": now}, deployment, config)


@run_app.command("retrain")
def run_retrain(
    round_id: Annotated[str, typer.Argument(help="Round whose labels to train on.")],
    epochs: Annotated[int | None, typer.Option(min=1, help="Fine-tune epochs.")] = None,
    deployment: Deployment = False,
    config: ConfigOpt = None,
) -> None:
    """Labels of ROUND_ID -> dataset version -> fine-tune -> evaluate -> register -> gate -> promote."""
    _go("retrain-and-promote", DEPLOYMENTS["retrain"], {"round_id": round_id, "epochs": epochs},
        deployment, config)


@loop_app.command("bootstrap")
def bootstrap_cmd(
    dataset_version: Annotated[str | None, typer.Option(help="Seed dataset version (default: newest seed).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default training.bootstrap_epochs).")] = None,
    as_of: Annotated[str | None, typer.Option(
        help="Production day the champion takes over (ISO; default today): its drift reference is the days before.",
    )] = None,
    deployment: Deployment = False,
    config: ConfigOpt = None,
) -> None:
    """Train the first champion from the model YAML on the seed dataset version (no-op if one exists)."""
    _go("bootstrap", DEPLOYMENTS["bootstrap"], {"dataset_version": dataset_version, "epochs": epochs, "as_of": as_of},
        deployment, config)


@loop_app.command("serve")
def serve_cmd(
    work_pool: Annotated[str | None, typer.Option(help="Register against this work pool instead of serving.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Register the deployments (weekly round, round watcher, retrain on round completed, by-hand ones) and serve them.

    The local stack runs this as its `runner` service; run it by hand only when the stack's runner is off.
    """
    from flows.serve import main

    argv = []
    if config is not None:
        argv += ["--config", str(config)]
    if work_pool:
        argv += ["--work-pool", work_pool]
    main(argv)


@loop_app.command("demo")
def demo_cmd(
    weeks: Annotated[int, typer.Option(min=1, max=52, help="Simulated weeks to run.")] = 3,
    size: Annotated[str, typer.Option(help="World and budget size: tiny | default | large.")] = "default",
    config: ConfigOpt = None,
) -> None:
    """The loop on the synthetic world, end to end through the real stack, deployments and events."""
    import json
    import os

    from flows.common import md_table
    from flows.demo import run_demo
    from infra.stack import client_env, ensure_up

    s = _prefect_env(config)
    ensure_up(s, log=lambda m: typer.echo(m))
    os.environ.update(client_env(s))
    out = run_demo(s, weeks=weeks, size=size, log=lambda m: typer.echo(m))
    typer.echo("")
    typer.echo(md_table(out["rounds"], ["week", "as_of", "labels", "boxes", "champion_map", "challenger_map",
                                        "control_champion", "control_challenger", "decision", "version"]))
    typer.echo(f"set-up {out['setup_seconds']:.0f} s (bootstrap {out['bootstrap_seconds']:.0f} s), "
               f"loop {out['loop_seconds']:.0f} s for {weeks} week(s)")
    typer.echo(f"learning curve: {out['learning_curve']}")
    port = s.prefect.api_url.rstrip("/").removesuffix("/api")
    typer.echo(f"Prefect UI:   {port}")
    typer.echo(f"MLflow UI:    {s.mlflow.tracking_uri}")
    typer.echo(f"Label Studio: {s.label_studio.url} (user {s.label_studio.username}; password in {s.secrets_file})")
    (s.data_dir / "demo").mkdir(parents=True, exist_ok=True)
    (s.data_dir / "demo" / "summary.json").write_text(json.dumps(out, indent=1, default=str))

"""Model commands: ``detloop train``, ``promote``, ``rollback``, ``models`` and ``champion pull DIR``.

``models_app`` is merged into the top level of the ``detloop`` app; ``champion_app`` is the
``detloop champion`` group. Heavy libraries are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOpt, get_settings

models_app = typer.Typer(no_args_is_help=True)
champion_app = typer.Typer(help="The served model (alias `champion`).", no_args_is_help=True)



@models_app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="Ultralytics data.yaml (e.g. from `detloop dataset materialize`).")],
    config: ConfigOpt = None,
    from_champion: Annotated[bool, typer.Option(
        "--from-champion/--bootstrap", help="Fine-tune the champion's weights, or train model.arch from scratch.")] = True,
    init_weights: Annotated[Path | None, typer.Option("--init-weights", help="Start from this .pt instead.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Override the configured epochs.")] = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="MLflow run name.")] = None,
    dataset_version: Annotated[str | None, typer.Option("--dataset-version", help="Recorded on run and version.")] = None,
    register: Annotated[bool, typer.Option(
        "--register/--no-register", help="Evaluate vs the champion, register, gate (and promote if allowed).")] = True,
    golden: Annotated[Path | None, typer.Option(
        "--golden", help="data.yaml of the golden slice (its `val` split); default: the val split of --data.")] = None,
) -> None:
    """Train a challenger by hand (bootstrap or fine-tune), then evaluate, register and gate it."""
    from datetime import UTC, datetime

    from cli.common import use_prefect
    from detloop.clients import Clients
    from flows.post_training import evaluate_and_promote
    from tasks.registry import fetch_champion
    from tasks.training import train

    s = get_settings(config)
    clients = Clients.from_settings(s)
    weights = init_weights
    parent = None
    if weights is None and from_champion:
        champion = fetch_champion(s, clients.registry)
        if champion is not None:
            weights, parent = champion.weights, champion.version
        else:
            typer.echo("no champion yet: bootstrap training from " + s.model.arch)
    name = run_name or f"manual-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    res = train(data, s, clients.registry, weights, name, {"trigger": "cli"}, dataset_version=dataset_version,
                parent_version=parent, epochs=epochs, store=clients.store)
    typer.echo(f"run {res.run_id} {'reused' if res.reused else 'trained'} in {res.train_seconds:.0f}s: "
               f"mAP50-95(val) {res.metrics.get('metrics/mAP50-95(B)', float('nan')):.4f}, weights {res.weights}")
    if not register:
        return
    use_prefect(s, config)
    post = evaluate_and_promote(res.run_id, str(res.weights), dataset_version, str(config) if config else None,
                                golden_data_yaml=str(golden or data), reason="gate passed (detloop train)",
                                actor="detloop:cli")
    typer.echo(f"version {post.version} (champion was {post.champion_version or 'none'}): {post.outcome}"
               + (" -> promoted" if post.promoted else ""))
    for r in (post.decision.reasons if post.decision else []):
        typer.echo(f"  - {r}")


@models_app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Option("--version", "-v", help="Registry version to promote.")],
    config: ConfigOpt = None,
    override: Annotated[bool, typer.Option("--override", help="Promote although the gate did not pass.")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (required with --override).")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who (default: the OS user).")] = None,
) -> None:
    """Move alias `champion` to VERSION (the old champion becomes `previous-champion`).

    With --override, a VERSION that already holds `champion` because someone moved the alias in MLflow's UI is
    recorded in the promotion log (nothing moves), so the loop builds rounds on it again.
    """
    from detloop.clients import Clients
    from tasks.registry import promote

    s = get_settings(config)
    c = Clients.from_settings(s)
    e = promote(s, c.registry, c.store, version, None, override=override, reason=reason, actor=actor)
    if e["action"] == "record":
        typer.echo(f"champion: v{e['version']} recorded in the promotion log (set outside detloop; by {e['actor']})")
        return
    typer.echo(f"champion: v{e['version']} (previous: {e['previous'] or 'none'}; {e['action']} by {e['actor']})")


@models_app.command("rollback")
def rollback_cmd(
    config: ConfigOpt = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded in the promotion log).")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who (default: the OS user).")] = None,
) -> None:
    """Restore `previous-champion` as `champion`."""
    from detloop.clients import Clients
    from tasks.registry import rollback

    s = get_settings(config)
    c = Clients.from_settings(s)
    e = rollback(s, c.registry, c.store, reason=reason, actor=actor)
    typer.echo(f"champion: v{e['version']} (rolled back from v{e['previous']})")


@models_app.command("models")
def models_cmd(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    log: Annotated[bool, typer.Option("--log", help="Also print the promotion log.")] = False,
) -> None:
    """List registered versions with aliases, gate outcome and golden mAP; warn when `champion` was moved outside
    detloop (it differs from the promotion log)."""
    from detloop.clients import Clients
    from tasks.registry import check_champion, list_models, read_promotion_log

    s = get_settings(config)
    c = Clients.from_settings(s)
    rows = list_models(c.registry)
    check = check_champion(s, c.registry, c.store)
    if check.drifted:  # MLflow's alias buttons moved `champion` around the gate
        typer.secho(f"WARNING: {check.message()}", fg=typer.colors.RED, bold=True, err=True)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
    else:
        typer.echo(f"model {s.mlflow.model_name} at {s.mlflow.tracking_uri}")
        typer.echo(f"{'ver':>4}  {'aliases':<28} {'gate':<22} {'golden mAP':>10}  {'dataset':<18} created")
        for r in rows:
            typer.echo(f"{r['version']:>4}  {','.join(r['aliases']) or '-':<28} {r['gate']:<22} "
                       f"{r['golden_map']:>10}  {r['dataset_version']:<18} {r['created']}")
        if not rows:
            typer.echo("(no versions yet)")
    if log:
        for e in read_promotion_log(c.store, s):
            typer.echo(json.dumps(e))


@champion_app.command("pull")
def champion_pull(
    dest: Annotated[Path, typer.Argument(help="Directory to write the champion's files into.")],
    config: ConfigOpt = None,
    alias: Annotated[str, typer.Option("--alias", help="Alias to fetch.")] = "champion",
) -> None:
    """Fetch the champion's weights, ONNX scoring artifact and thresholds by alias (as a deployment would)."""
    from detloop.clients.registry import RegistryClient
    from detloop.errors import NotFound
    from tasks.registry import load_champion

    s = get_settings(config)
    out = load_champion(s, RegistryClient(s), dest, alias=alias)
    if out is None:
        raise NotFound(f"model {s.mlflow.model_name}: no version holds alias '{alias}' (no champion yet)")
    info = json.loads((out / "champion.json").read_text())
    typer.echo(f"v{info['version']} -> {out} (thresholds: {info['thresholds']})")

"""``detloop dataset list | show ID | diff A B | materialize ID``: inspect dataset versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOpt, get_settings

dataset_app = typer.Typer(help="Immutable dataset versions (manifests in S3).", no_args_is_help=True)



def _store(config: Path | None):  # type: ignore[no-untyped-def]
    from detloop.clients.s3 import S3Store

    settings = get_settings(config)
    return settings, S3Store(settings)


@dataset_app.command("list")
def dataset_list(
    kind: Annotated[str | None, typer.Option(help="seed | train | golden (default: all).")] = None,
    config: ConfigOpt = None,
    as_json: bool = typer.Option(False, "--json", help="JSON lines."),
) -> None:
    """List stored versions, oldest first."""
    from detloop.datasets import list_versions

    settings, store = _store(config)
    rows = list_versions(store, settings, kind)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, sort_keys=True))
        return
    if not rows:
        typer.echo("no dataset versions")
        return
    typer.echo(f"{'id':<16}  {'kind':<6}  {'frames':>6}  {'boxes':>6}  {'parent':<16}  created_at  splits")
    for r in rows:
        typer.echo(
            f"{r['id']:<16}  {r['kind']:<6}  {r['n_frames']:>6}  {r.get('boxes', 0):>6}  {r.get('parent') or '-':<16}  "
            f"{r.get('created_at', '?')}  {r.get('splits', {})}"
        )


@dataset_app.command("show")
def dataset_show(
    version_id: Annotated[str, typer.Argument(help="Dataset version id.")],
    config: ConfigOpt = None,
    entries: bool = typer.Option(False, "--entries", help="Also print every entry as a JSON line."),
) -> None:
    """Summary of one version: kind, parent, rounds, frames per split, boxes per class."""
    from detloop.datasets import load_manifest

    settings, store = _store(config)
    m = load_manifest(store, settings, version_id)
    typer.echo(f"id: {version_id}\nkind: {m.kind}\nparent: {m.parent or '-'}\nrounds: {m.rounds}")
    typer.echo(f"classes: {m.classes}\nframes: {len(m.entries)} {m.counts()}")
    typer.echo(f"hard frames: {sum(e.hard for e in m.entries)}")
    cams: dict[str, int] = {}
    for e in m.entries:
        cams[e.camera] = cams.get(e.camera, 0) + 1
    typer.echo(f"cameras: {dict(sorted(cams.items()))}")
    for split in m.counts():
        typer.echo(f"boxes[{split}]: {m.box_counts(split)}")
    if entries:
        for e in m.entries:
            typer.echo(json.dumps(e.to_dict(), sort_keys=True))


@dataset_app.command("diff")
def dataset_diff(
    a: Annotated[str, typer.Argument(help="Older version id.")],
    b: Annotated[str, typer.Argument(help="Newer version id.")],
    config: ConfigOpt = None,
    as_json: bool = typer.Option(False, "--json", help="JSON."),
) -> None:
    """Frames added / removed / relabelled and boxes per class from A to B."""
    from detloop.datasets import diff, load_manifest

    settings, store = _store(config)
    d = diff(load_manifest(store, settings, a), load_manifest(store, settings, b), a, b)
    typer.echo(json.dumps(d.to_dict(), indent=1) if as_json else d.summary())


@dataset_app.command("materialize")
def dataset_materialize(
    version_id: Annotated[str, typer.Argument(help="Dataset version id.")],
    splits: Annotated[str, typer.Option(help="Comma-separated splits.")] = "train,val",
    oversample: Annotated[int, typer.Option(min=1, help="Repeats of hard train frames.")] = 1,
    dest: Annotated[Path | None, typer.Option(help="Directory (default: the cache under data_dir).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Write a local Ultralytics dataset and print the data YAML path."""
    from detloop.datasets import materialize

    settings, store = _store(config)
    path = materialize(store, settings, version_id, dest, tuple(s for s in splits.split(",") if s), oversample)
    typer.echo(str(path))

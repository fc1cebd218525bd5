"""``detloop world publish | seed | golden | preview``: the synthetic production world."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOpt, get_settings

world_app = typer.Typer(help="Synthetic production world: frames, ground truth, seed and golden sets.",
                        no_args_is_help=True)

SeedOpt = Annotated[int | None, typer.Option("--seed", help="World seed (default: settings world.seed).")]


def _parse_date(value: str) -> date:
    from detloop.errors import DataError

    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise DataError(f"--start: expected an ISO date like 2026-01-05, got {value!r}") from err


@world_app.command("publish")
def world_publish(
    start: Annotated[str, typer.Option(help="First date (ISO).")] = "2026-01-05",
    days: Annotated[int, typer.Option(min=1, help="Consecutive dates.")] = 7,
    frames_per_day: Annotated[int, typer.Option(min=1, help="Frames per active camera per day.")] = 50,
    seed: SeedOpt = None,
    corrupt: Annotated[int, typer.Option(min=0, help="Broken objects to inject (quarantine tests).")] = 0,
    camera: Annotated[list[str] | None, typer.Option(help="Only these cameras (repeatable).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Parallel render+upload workers.")] = 8,
    config: ConfigOpt = None,
) -> None:
    """Write production frames and their oracle truth to S3 (re-publishing skips existing keys)."""
    from detloop.world.publish import publish_world

    settings = get_settings(config)
    r = publish_world(settings, _parse_date(start), days, frames_per_day, seed=seed, corrupt=corrupt,
                      cameras=camera or None, threads=threads, progress=True)
    typer.echo(
        f"frames: {r.frames} planned, {r.written} written, {r.skipped} already there; {r.boxes} boxes; "
        f"{r.bytes / 1e6:.1f} MB in {r.seconds:.1f} s; cameras {r.cameras}"
    )
    typer.echo(f"s3://{settings.s3.production_bucket}/{settings.s3.production_prefix}  "
               f"truth: s3://{settings.s3.oracle_bucket}/truth/")
    for k in r.corrupt_keys:
        typer.echo(f"corrupt: {k}")


def _labelled(kind: str, seed: int | None, frames: int | None, threads: int, config: Path | None) -> None:
    from detloop.world.publish import publish_labelled_set

    settings = get_settings(config)
    vid = publish_labelled_set(settings, kind, seed=seed, frames=frames, threads=threads, progress=True)
    typer.echo(vid)


@world_app.command("seed")
def world_seed(
    seed: SeedOpt = None,
    frames: Annotated[int | None, typer.Option(min=1, help="Frames (default: world seed_set.frames).")] = None,
    threads: Annotated[int, typer.Option(min=1)] = 8,
    config: ConfigOpt = None,
) -> None:
    """Publish the bootstrap labelled set as a `seed` dataset version; prints its id."""
    _labelled("seed", seed, frames, threads, config)


@world_app.command("golden")
def world_golden(
    seed: SeedOpt = None,
    frames: Annotated[int | None, typer.Option(min=1, help="Frames (default: world golden_set.frames).")] = None,
    threads: Annotated[int, typer.Option(min=1)] = 8,
    config: ConfigOpt = None,
) -> None:
    """Publish the golden evaluation set as a `golden` dataset version; prints its id."""
    _labelled("golden", seed, frames, threads, config)


@world_app.command("preview")
def world_preview(
    out: Annotated[Path, typer.Option(help="Directory for the PNGs.")] = Path("world-preview"),
    day: Annotated[str, typer.Option(help="Date (ISO).")] = "2026-01-05",
    frames: Annotated[int, typer.Option(min=1, help="Frames per camera.")] = 2,
    boxes: Annotated[bool, typer.Option(help="Draw truth boxes.")] = True,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Render a few frames per active camera locally (no S3), with truth boxes and conditions."""
    import cv2

    from detloop.world.publish import load_world
    from detloop.world.render import conditions, render_frame

    settings = get_settings(config)
    cfg = load_world(settings)
    d = _parse_date(day)
    s = settings.world.seed if seed is None else seed
    out.mkdir(parents=True, exist_ok=True)
    for cam in cfg.active_cameras(d):
        cond = conditions(cfg, list(settings.classes), cam, d)
        for i in range(frames):
            f = render_frame(cfg, list(settings.classes), cam, d, i, frames, s)
            img = f.image.copy()
            if boxes:
                for (x1, y1, x2, y2), c in zip(f.truth.xyxy.astype(int), f.truth.class_id, strict=True):
                    cv2.rectangle(img, (x1, y1), (x2, y2), (255, 255, 255), 1)
                    cv2.putText(img, settings.classes[int(c)], (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX,
                                0.35, (255, 255, 255), 1)
            p = out / f"{cam}_{d.isoformat()}_{f.frame_id}.png"
            cv2.imwrite(str(p), img)
            typer.echo(f"{p}  boxes={len(f.truth)}  {json.dumps(f.meta)}  drifts={list(cond.drifts)}")

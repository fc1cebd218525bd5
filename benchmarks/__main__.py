"""``python -m benchmarks`` (also ``detloop bench``): the benchmarks, run from the command line.

Results go to ``benchmarks/results/`` (JSON, PNG); the tables and the commands that produced them are in
``docs/benchmarks.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks (results in benchmarks/results/, tables in docs/benchmarks.md): `al` measures "
                        "selection strategies against random; `postprocessing` soft-NMS and tiling (issue 17); `scoring`, "
                        "`selection`, `labelstudio`, or `all` of those three.",
                        no_args_is_help=True)


def _ints(text: str) -> list[int]:
    from detloop.errors import DataError

    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError as err:
        raise DataError(f"--seeds must be comma-separated integers, got {text!r}") from err


@bench_app.command("al")
def bench_al(
    quick: Annotated[bool, typer.Option("--quick", help="Smoke size: 3 strategies, 1 seed, 3 rounds.")] = False,
    all_arms: Annotated[bool, typer.Option("--all", help="Also least confidence (max) and margin (max).")] = False,
    arms: Annotated[str | None, typer.Option(help="Comma-separated arms (overrides --quick/--all).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (selection = training seed).")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Selection rounds.")] = None,
    budget: Annotated[int | None, typer.Option(min=1, help="Frames labelled per round.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per fine-tune.")] = None,
    bootstrap_epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of the bootstrap model.")] = None,
    seed_frames: Annotated[int | None, typer.Option(min=1, help="Seed (bootstrap) set frames (world).")] = None,
    pool: Annotated[int | None, typer.Option(min=1, help="Pool frames (world).")] = None,
    eval_frames: Annotated[int | None, typer.Option("--eval", min=1, help="Evaluation frames (world).")] = None,
    world_seed: Annotated[int | None, typer.Option(help="World seed (a second one confirms a result).")] = None,
    data: Annotated[Path | None, typer.Option(help="YOLO data.yaml with seed/pool/eval splits instead of the "
                                                   "synthetic world.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="detloop config: classes and the "
                                                "configured selection (the 'default' arm).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads.")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Cache of data, weights and per-round results.")] = None,
    out: Annotated[Path | None, typer.Option(help="Result JSON (PNGs are written beside it).")] = None,
    bootstrap_weights: Annotated[Path | None, typer.Option(help="Start from these .pt weights instead of training "
                                                         "a bootstrap model (e.g. your current model).")] = None,
    summary_only: Annotated[bool, typer.Option("--summary-only", help="Only summarise cached rounds.")] = False,
    via_label_studio: Annotated[bool, typer.Option(
        "--via-label-studio", help="Send each round's paid frames (new and control) through the config's real "
        "Label Studio and S3 (stack must be up): one project per run, one task per frame (idempotent), the simulated "
        "annotator submits over the API, labels are read back with the loop's converter and trained on. Slower; "
        "same labels, same run key. Default: the annotator's labels are written directly.")] = False,
    label_studio_project: Annotated[str | None, typer.Option(
        help="Label Studio project title for --via-label-studio (default: detloop-bench-<run key>).")] = None,
    retire_control_after: Annotated[int | None, typer.Option(
        min=0, help="Rounds the default arm's control frames serve before they join its training set (default: the "
        "config's selection.control_pool_rounds, as the loop does; 0: never). Changes the default arm only: it "
        "caches apart and pairs with the base in `bench al-compare`.")] = None,
) -> None:
    """Run (or resume) the active-learning benchmark; writes the JSON, a learning-curve PNG and a rare-class PNG."""
    from benchmarks.al import RESULTS, BenchConfig, check_arms, markdown_table, quick_config, run_benchmark

    cfg = quick_config() if quick else BenchConfig()
    cfg.via_label_studio = via_label_studio
    cfg.label_studio_project = label_studio_project
    if all_arms:
        cfg.arms = [*cfg.arms, "least_confidence_max", "margin_max"]
    if arms:
        cfg.arms = [a.strip() for a in arms.split(",") if a.strip()]
    cfg.arms = check_arms(cfg.arms)
    if seeds:
        cfg.seeds = _ints(seeds)
    for name, val in (("rounds", rounds), ("budget", budget), ("epochs", epochs),
                      ("bootstrap_epochs", bootstrap_epochs), ("world_seed", world_seed), ("threads", threads)):
        if val is not None:
            setattr(cfg, name, val)
    for name, val in (("seed", seed_frames), ("pool", pool), ("eval", eval_frames)):
        if val is not None:
            cfg.sizes = {**cfg.sizes, name: val}
    if data is not None:
        cfg.data = str(data.resolve())
    if config is not None:
        cfg.config = str(config.resolve())
    if bootstrap_weights is not None:
        cfg.bootstrap_weights = str(bootstrap_weights.resolve())
    if work_dir is not None:
        cfg.work_dir = str(work_dir.resolve())
    if retire_control_after is not None:
        cfg.retire_control_after = retire_control_after
    stem = "al_quick" if quick else "al"
    out_json = out or RESULTS / f"{stem}.json"
    summary = run_benchmark(cfg, out_json, out_json.with_name(out_json.stem + "_curve.png"),
                            out_json.with_name(out_json.stem + "_rare.png"), summary_only,
                            log=lambda m: typer.echo(m, err=True))
    typer.echo(markdown_table(summary))
    typer.echo(f"wrote {out_json}")


@bench_app.command("al-merge")
def bench_al_merge(
    results: Annotated[list[Path], typer.Argument(help="Result JSONs of `bench al` (same run key, different seeds).")],
    out: Annotated[Path, typer.Option(help="Merged result JSON (PNGs are written beside it).")],
) -> None:
    """Merge `bench al` results of the same run that hold different seeds (run apart, on other machines, or
    whose cache is gone): efficiencies and their intervals are recomputed over all seeds."""
    from benchmarks.al import markdown_table, merge_results

    summary = merge_results(results, out)
    typer.echo(markdown_table(summary))
    typer.echo(f"wrote {out} (seeds {summary['seeds_complete_all_arms']})")


@bench_app.command("al-compare")
def bench_al_compare(
    base: Annotated[Path, typer.Argument(help="Result JSON of `bench al` holding the base arm.")],
    variant: Annotated[Path, typer.Argument(help="Result JSON of the same run (same run key) with the variant.")],
    out: Annotated[Path, typer.Option(help="Comparison JSON.")],
    arm: Annotated[str, typer.Option(help="Arm compared (the default selection with and without an option).")]
    = "default",
) -> None:
    """Compare one arm across two `bench al` results of the same run, e.g. the default selection with an option
    switched on (set by environment, so it caches apart): per-round differences in mAP50-95, mAP50, rare-class and
    small AP, per seed and as a mean with a paired bootstrap interval over seeds, and the variant's label
    efficiency against the base arm on every axis."""
    from benchmarks.al import compare_results, compare_table

    cmp = compare_results(base, variant, out, arm)
    typer.echo(compare_table(cmp))
    typer.echo(f"wrote {out} (seeds {cmp['seeds']})")


# --------------------------------------------------------------------------------------------
# The measured-once benchmarks of docs/benchmarks.md (each also runs as `python -m benchmarks.<name>`)
# --------------------------------------------------------------------------------------------
_PASS = {"allow_extra_args": True, "ignore_unknown_options": True}
_CONFIG = typer.Option("--config", "-c", help="detloop config whose stack the benchmark uses "
                                              "(default: $DETLOOP_CONFIG or configs/test.yaml).")


def _config(config: Path | None) -> str:
    import os

    return str(config or os.environ.get("DETLOOP_CONFIG") or "configs/test.yaml")


def _stack_up(config: str, s3_only: bool) -> None:
    """Start what the benchmark needs of ``config``'s stack (a no-op for services already up)."""
    from detloop.settings import load_settings
    from infra.stack import ensure_up

    ensure_up(load_settings(config), lambda m: typer.echo(m, err=True), s3_only=s3_only)


# name -> (module in benchmarks/, what of the stack it needs: None | "s3" | "all", headline keys of its JSON)
_BENCHES: dict[str, tuple[str, str | None, list[str]]] = {
    "selection": ("selection_scale", None, ["select_seconds", "peak_rss_mb", "meets_target"]),
    "scoring": ("scoring_pipeline", "s3", ["input_size", "pipeline_fps", "ratio_pipeline_over_bare", "target_ratio"]),
    "labelstudio": ("labelstudio_io", "all", ["tasks", "push_s", "pull_convert_s"]),
    "faults": ("faults", "all", ["lost_total", "champion_always_ok", "seconds"]),
    "postprocessing": ("postprocessing", None, ["verdicts", "seconds"]),
    "hard_data": ("hard_data", None, ["seeds_done", "skipped_over_budget", "seconds"]),
    "loss-tta": ("loss_tta", None, ["seconds_total"]),
    "error-cost": ("error_cost", None, ["boxes_per_image"]),
    "drift": ("drift", None, ["targets", "seconds"]),
    "label-free": ("label_free_pool", None, ["camera_days", "headline"]),
    "release-check": ("release_check", "all", ["release_check_min_frames", "held"]),
    "monitor-replay": ("monitor_replay", "s3", ["headline"]),
    "soak": ("soak", None, ["weeks_run", "episodes", "seconds"]),
    "arch": ("arch", None, ["verdicts", "seconds"]),
}


def _run(name: str, args: list[str], config: Path | None) -> None:
    """Start what benchmark ``name`` needs of the stack, run its ``main`` with ``args``, echo its headline."""
    import importlib

    module, needs, keys = _BENCHES[name]
    help_only = "--help" in args or "-h" in args
    if needs:
        cfg = _config(config)
        if not help_only:
            _stack_up(cfg, s3_only=needs == "s3")
        args = ["--config", cfg, *args]
    result = importlib.import_module(f"benchmarks.{module}").main(args)
    shown = ", ".join(f"{k} {result[k]}" for k in keys if k in result)
    typer.echo(f"{name}: {shown}", err=True)


@bench_app.command("scoring", context_settings=_PASS)
def bench_scoring(ctx: typer.Context, config: Annotated[Path | None, _CONFIG] = None) -> None:
    """Scoring pipeline vs bare ONNX Runtime (issue 3): starts the config's S3 if needed, then runs
    `python -m benchmarks.scoring_pipeline`; other options go there (`detloop bench scoring -- --help`)."""
    _run("scoring", list(ctx.args), config)


@bench_app.command("selection", context_settings=_PASS)
def bench_selection(ctx: typer.Context) -> None:
    """Selection at scale (100k frames, 256-d, budget 1,000): `python -m benchmarks.selection_scale`;
    other options go there (`detloop bench selection -- --help`). Needs no stack."""
    _run("selection", list(ctx.args), None)


@bench_app.command("labelstudio", context_settings=_PASS)
def bench_labelstudio(ctx: typer.Context, config: Annotated[Path | None, _CONFIG] = None) -> None:
    """Label Studio push / pull of 10k tasks: starts the config's stack if needed, then runs
    `python -m benchmarks.labelstudio_io`; other options go there (`detloop bench labelstudio -- --help`)."""
    _run("labelstudio", list(ctx.args), config)


@bench_app.command("faults", context_settings=_PASS)
def bench_faults(ctx: typer.Context, config: Annotated[Path | None, _CONFIG] = None) -> None:
    """Every stack service killed at every stage of a round (scoring, push, pull, train, promotion), and the flow
    process itself: recovery with `stack up`, re-runs, and what was lost (issue 18; ~1 h on 2 cores; the table goes
    to docs/reliability.md). `--services s3,mlflow --stages push,pull` runs part of the matrix."""
    _run("faults", list(ctx.args), config)


@bench_app.command("postprocessing", context_settings=_PASS)
def bench_postprocessing(ctx: typer.Context) -> None:
    """Crowds and small objects (issue 17): hard vs Gaussian vs linear soft-NMS on the crowded slice, and whole frame
    at 320 / 640 vs tiling (with and without the full-frame pass) on small objects, with CPU ms per frame and paired
    bootstrap intervals: `python -m benchmarks.postprocessing`; other options go there (`--data data.yaml`,
    `--weights best.pt`; `detloop bench postprocessing -- --help`). Needs no stack."""
    _run("postprocessing", list(ctx.args), None)


@bench_app.command("hard_data", context_settings=_PASS)
def bench_hard_data(ctx: typer.Context) -> None:
    """Issue 19, data side: copy-paste, hard-example mining and rare-class oversampling against a plain fine-tune
    of the same champion (same frames, epochs, seeds), rare-class AP and mAP on real held-out frames with paired
    bootstrap intervals: `python -m benchmarks.hard_data`; options go there (`--seeds 0,1`, `--epochs 3`,
    `--max-minutes 40`; `detloop bench hard_data -- --help`). Needs no stack."""
    _run("hard_data", list(ctx.args), None)


@bench_app.command("error-cost", context_settings=_PASS)
def bench_error_cost(ctx: typer.Context) -> None:
    """What the TIDE error breakdown (issue 19) costs per evaluated slice, against the metric computation every
    evaluation runs (generated boxes, no model): `python -m benchmarks.error_cost`; options go there (`--sizes`,
    `--boxes-per-image`; `detloop bench error-cost -- --help`). Needs no stack."""
    _run("error-cost", list(ctx.args), None)


@bench_app.command("loss-tta", context_settings=_PASS)
def bench_loss_tta(ctx: typer.Context) -> None:
    """Imbalance-aware loss and offline TTA (issue 19): the champion fine-tuned with bce / focal / varifocal /
    cls_pw (rare-class, small and overall AP with paired bootstrap intervals), and plain vs TTA evaluation (AP per
    slice, CPU cost ratio, labeller edits of the pre-annotation): `python -m benchmarks.loss_tta`; other options go
    there (`--parts loss,tta`, `--seeds 0,1,2`, `--weights best.pt`; `detloop bench loss-tta -- --help`). No stack."""
    _run("loss-tta", list(ctx.args), None)
@bench_app.command("drift", context_settings=_PASS)
def bench_drift(ctx: typer.Context) -> None:
    """Drift monitor on the benchmark world (issue 21): detection delay and missed episodes per drift, false alarms
    per stationary camera-day, each signal alone and combined, true mAP timeline, label-free accuracy estimate:
    `python -m benchmarks.drift`; other options go there (`detloop bench drift -- --help`). Needs no stack."""
    _run("drift", list(ctx.args), None)


@bench_app.command("label-free", context_settings=_PASS)
def bench_label_free(ctx: typer.Context) -> None:
    """Label-free accuracy pooled over champions (issue 21): reads `detloop bench drift` results (one champion
    each) and reports, per champion and pooled, the camera-days each estimator gets within 0.05 mAP50 (all, moved,
    stationary), with a scatter of estimate against truth: `python -m benchmarks.label_free_pool RESULT.json ...
    --out ... --plot ...`. Nothing is re-scored; no stack."""
    _run("label-free", list(ctx.args), None)


@bench_app.command("release-check", context_settings=_PASS)
def bench_release_check(ctx: typer.Context, config: Annotated[Path | None, _CONFIG] = None) -> None:
    """The labelled check of a carried camera's release (issue 21) replayed on a soak's stored records: per
    champion and live record, each carried camera's control frames since its onset, their mAP50 and the label-free
    estimate on them, and whether the check would hold the camera: `python -m benchmarks.release_check`. Starts
    the soak config's stack (`--config`); other options go there (`detloop bench release-check -- --help`)."""
    _run("release-check", list(ctx.args), config)


@bench_app.command("monitor-replay", context_settings=_PASS)
def bench_monitor_replay(ctx: typer.Context, config: Annotated[Path | None, _CONFIG] = None) -> None:
    """The drift monitor's rule replayed on a soak's stored features under other drift settings (issue 21): per
    variant, each world onset's first episode and delay, false alarms on stationary camera-days, and the comparisons'
    wall time: `python -m benchmarks.monitor_replay`. Starts the soak config's S3 (`--config`); other options go
    there (`detloop bench monitor-replay -- --help`)."""
    _run("monitor-replay", list(ctx.args), config)


@bench_app.command("soak", context_settings=_PASS)
def bench_soak(ctx: typer.Context) -> None:
    """Weeks of unattended operation (issue 21): the demo world through the real stack and deployments, daily drift
    monitor, drift-triggered and weekly rounds labelled by simulated annotators, one service killed per week:
    `python -m benchmarks.soak --weeks N` (also `detloop soak`); it brings its config's stack up itself
    (`--config`, default $DETLOOP_CONFIG or configs/test.yaml); `detloop bench soak -- --help`."""
    _run("soak", list(ctx.args), None)
@bench_app.command("arch", context_settings=_PASS)
def bench_arch(ctx: typer.Context) -> None:
    """Model families (issue 20): YOLO11n vs YOLO26n (NMS and NMS-free) vs a P2 variant, trained from scratch with
    the same budget: mAP, crowded AP/AR, small AP (paired bootstrap), ONNX CPU ms/frame, training min/epoch:
    `python -m benchmarks.arch`; other options go there (`--archs`, `--epochs`; `detloop bench arch -- --help`).
    Needs no stack."""
    _run("arch", list(ctx.args), None)


@bench_app.command("all")
def bench_all(config: Annotated[Path | None, _CONFIG] = None) -> None:
    """Selection at scale, the scoring pipeline and Label Studio I/O at their documented sizes (about 15
    minutes on 2 cores; the active-learning benchmark, hours, is `detloop bench al`). JSON goes to
    benchmarks/results/; the tables in docs/benchmarks.md are written by hand from it."""
    for name in ("selection", "scoring", "labelstudio"):
        _run(name, [], config)


def main() -> None:
    """Entry point: one-line errors (exit 2), as the ``detloop`` command prints them."""
    import sys

    from detloop.errors import DetloopError

    try:
        bench_app(prog_name="detloop bench")
    except DetloopError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

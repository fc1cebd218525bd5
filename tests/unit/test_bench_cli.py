"""`detloop bench` forwards to `python -m benchmarks` (nothing imports benchmarks/): every benchmark the docs
name is a command (`make bench` runs `detloop bench all`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from benchmarks.__main__ import bench_app
from cli.main import app


def test_bench_lists_every_benchmark() -> None:
    res = CliRunner().invoke(bench_app, ["--help"])
    assert res.exit_code == 0
    for name in ("al", "scoring", "selection", "labelstudio", "faults", "postprocessing", "all"):
        assert f" {name} " in res.output


def test_detloop_bench_runs_the_benchmarks_module_in_a_child_process(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda argv: seen.append(argv) or 3)
    res = CliRunner().invoke(app, ["bench", "al", "--quick", "--help"])
    assert seen == [[sys.executable, "-m", "benchmarks", "al", "--quick", "--help"]]
    assert res.exit_code == 3  # its exit status is the command's


def test_bench_selection_forwards_options_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "sel.json"
    res = CliRunner().invoke(bench_app, ["selection", "--frames", "3000", "--budget", "60", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert (r["frames"], r["budget"], r["selected"] + r["control"]) == (3000, 60, 60)
    assert "selection: select_seconds" in res.output


def test_bench_scoring_help_is_the_benchmarks_own(tmp_path: Path) -> None:
    res = CliRunner().invoke(bench_app, ["scoring", "--", "--help"])
    assert res.exit_code == 0
    assert "--frames-from" in res.output  # argparse help of benchmarks.scoring_pipeline: no stack started


def test_bench_postprocessing_help_is_the_benchmarks_own() -> None:
    res = CliRunner().invoke(bench_app, ["postprocessing", "--", "--help"])
    assert res.exit_code == 0
    assert "--eval-frames" in res.output and "--bootstrap" in res.output  # argparse help of the module

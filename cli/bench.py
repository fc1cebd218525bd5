"""``detloop bench ...``: runs the benchmarks in ``benchmarks/`` (``python -m benchmarks``) in a child process.

Nothing in the product imports ``benchmarks/``; this command only starts it, forwarding every argument,
so ``detloop bench al --quick`` and ``python -m benchmarks al --quick`` are the same run.
"""

from __future__ import annotations

import subprocess
import sys

import typer

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def bench(ctx: typer.Context) -> None:
    """Benchmarks (results in benchmarks/results/, tables in docs/benchmarks.md): `al` measures selection
    strategies against random; `scoring`, `selection`, `labelstudio`, or `all` of those three.
    `detloop bench --help` lists them; `detloop bench NAME --help` explains one."""
    rc = subprocess.call([sys.executable, "-m", "benchmarks", *ctx.args])
    raise typer.Exit(rc)


def soak(ctx: typer.Context) -> None:
    """Weeks of unattended operation through the real stack and deployments, one injected fault per week
    (`python -m benchmarks soak --weeks N`; a benchmark, not part of `make test`; docs/drift.md "Soak").
    `detloop soak --help` lists its options."""
    rc = subprocess.call([sys.executable, "-m", "benchmarks", "soak", *ctx.args])
    raise typer.Exit(rc)

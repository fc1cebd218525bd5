"""Screenshots of the three web UIs for ``docs/ui.md``, taken with headless Chromium (Debian's ``chromium``).

``python -m infra.screenshots --config configs/local.yaml --out docs/img/ui`` finds the newest round, run, model
and flow runs of the configured stack and captures the pages a person opens for each job of the loop. Chromium
is driven over the DevTools protocol (the ``websockets`` package Prefect already brings): a fixed window size,
the Label Studio admin's session cookie (logged in with the stack's ``secrets.env``), a wait for the page's
JavaScript to render. Nothing is clicked and nothing is written to the stack.

Flags are the ones that work on this kind of machine (no sandbox as root, no background networking: the
network is closed and Chromium otherwise retries Google's hosts).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")


@dataclass
class Shot:
    """One page to capture: its URL, the PNG name, seconds to let it render, an optional script run before."""

    name: str
    url: str
    wait_s: float = 10.0
    script: str | None = None


class Browser:
    """A headless Chromium on a DevTools port (started and stopped by this object, by its own pid)."""

    def __init__(self, width: int = 1440, height: int = 900, binary: str | None = None):
        self.width, self.height = width, height
        self.binary = binary or shutil.which("chromium") or "/usr/bin/chromium"
        self.profile = Path(tempfile.mkdtemp(prefix="detloop-chromium-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Browser:
        self.proc = subprocess.Popen(
            [self.binary, *CHROMIUM_FLAGS, f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/version", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.binary} did not open its DevTools port {self.port}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def capture(self, shots: Sequence[Shot], out_dir: Path, cookies: Sequence[dict[str, Any]] = ()) -> list[Path]:
        """Open each shot's URL in one tab and save a PNG of the viewport as ``out_dir/<name>.png``."""
        return asyncio.run(self._capture(shots, out_dir, cookies))

    async def _capture(self, shots: Sequence[Shot], out_dir: Path, cookies: Sequence[dict[str, Any]]) -> list[Path]:
        import websockets

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
            seq = 0

            async def call(method: str, **params: Any) -> Any:
                nonlocal seq
                seq += 1
                await ws.send(json.dumps({"id": seq, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == seq:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg.get("result", {})

            await call("Page.enable")
            await call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                       deviceScaleFactor=1, mobile=False)
            for c in cookies:
                await call("Network.setCookie", **c)
            for shot in shots:
                await call("Page.navigate", url=shot.url)
                await asyncio.sleep(shot.wait_s)
                if shot.script:
                    await call("Runtime.evaluate", expression=shot.script, awaitPromise=True)
                    await asyncio.sleep(2.0)
                png = await call("Page.captureScreenshot", format="png")
                path = out_dir / f"{shot.name}.png"
                path.write_bytes(base64.b64decode(png["data"]))
                written.append(path)
        return written


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def label_studio_session(url: str, email: str, password: str) -> dict[str, Any]:
    """The admin's Label Studio session cookie (a browser login), as a DevTools ``Network.setCookie`` argument."""
    import httpx

    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as c:
        c.get("/user/login/").raise_for_status()
        r = c.post("/user/login/", data={"email": email, "password": password,
                                         "csrfmiddlewaretoken": c.cookies["csrftoken"]},
                   headers={"Referer": f"{url}/user/login/"})
        if r.status_code != 302 or "sessionid" not in c.cookies:
            raise RuntimeError(f"Label Studio at {url} refused the admin login ({r.status_code})")
        return {"name": "sessionid", "value": c.cookies["sessionid"], "url": url}


def plan(settings: Any) -> list[Shot]:
    """The pages of ``docs/ui.md``, for the newest round, run, model version and flow runs of the stack."""
    from detloop.clients import Clients
    from detloop.clients.registry import UI_VIEW
    from tasks import rounds
    from tasks.registry import CHAMPION

    clients = Clients.from_settings(settings)
    shots: list[Shot] = []
    # Label Studio: the project's round tabs, a task with its pre-annotation
    recs = rounds.list_rounds(clients.store, settings)
    if recs:
        rid = recs[-1].round_id
        view = rounds.round_view_url(clients.store, settings, rid)
        ids = rounds.load_task_ids(clients.store, settings, rid) or {}
        if view:
            shots.append(Shot("labelstudio-round-tab", view, 8))
            if ids:
                shots.append(Shot("labelstudio-task-with-preannotation", f"{view}&task={min(ids.values())}", 30))
        project = clients.labels.find_project(settings.label_studio.project_title)
        if project is not None:
            shots.append(Shot("labelstudio-instructions", f"{settings.label_studio.url}/projects/{project.id}"
                                                          "/settings/instructions", 6))
    # MLflow: the experiment (model-training view), a round's run, its plots, the registered model and champion
    reg = clients.registry
    base = settings.mlflow.tracking_uri.rstrip("/")
    shots.append(Shot("mlflow-experiment", reg.experiment_url(), 15))
    champ = reg.version_by_alias(CHAMPION)
    runs = reg.find_runs("attributes.status = 'FINISHED'", max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        shots.append(Shot("mlflow-run", reg.run_url(run_id), 15))
        plots = reg.run_url(run_id).replace(f"?{UI_VIEW}", f"/artifacts/plots/confusion_matrix.png?{UI_VIEW}")
        shots.append(Shot("mlflow-run-plots", plots, 15))
    shots.append(Shot("mlflow-registered-model", f"{base}/#/models/{settings.mlflow.model_name}?{UI_VIEW}", 15))
    if champ is not None:
        shots.append(Shot("mlflow-champion-version", reg.version_url(champ.version), 15))
    # Prefect: deployments, a run form, the runs list, a retrain run's artifact
    ui = settings.prefect.api_url.rstrip("/").removesuffix("/api")
    shots.append(Shot("prefect-deployments", f"{ui}/deployments", 6))
    dep_id, run_id_p = _prefect_ids(settings)
    if dep_id:
        shots.append(Shot("prefect-run-form", f"{ui}/deployments/deployment/{dep_id}/run", 6))
    shots.append(Shot("prefect-runs", f"{ui}/runs", 6))
    if run_id_p:
        shots.append(Shot("prefect-retrain-artifact", f"{ui}/runs/flow-run/{run_id_p}?tab=Artifacts", 8))
    return shots


def _prefect_ids(settings: Any) -> tuple[str | None, str | None]:
    """The weekly deployment's id and the newest completed retrain run's id (None when absent)."""
    os.environ.setdefault("PREFECT_API_URL", settings.prefect.api_url)
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypes
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deps = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["select-for-labeling"])))
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain-and-promote"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypes(any_=[StateType.COMPLETED]))),
            sort=FlowRunSort.START_TIME_DESC, limit=1)
    return (str(deps[0].id) if deps else None), (str(runs[0].id) if runs else None)


def main(argv: list[str] | None = None) -> None:
    from detloop.settings import load_settings
    from infra.secrets import ensure_secrets

    ap = argparse.ArgumentParser(prog="python -m infra.screenshots", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="Config YAML of the stack (default $DETLOOP_CONFIG).")
    ap.add_argument("--out", default="docs/img/ui", help="Directory for the PNGs.")
    ap.add_argument("--only", nargs="*", default=None, help="Only these shot names.")
    args = ap.parse_args(argv)
    settings = load_settings(args.config)
    secrets = ensure_secrets(settings.secrets_file, os.environ)
    shots = [s for s in plan(settings) if args.only is None or s.name in args.only]
    cookie = label_studio_session(settings.label_studio.url, settings.label_studio.username,
                                  secrets.label_studio_password)
    with Browser() as browser:
        for path in browser.capture(shots, Path(args.out), [cookie]):
            print(path)


if __name__ == "__main__":
    main()

"""``detloop drift report`` runs its flow against the config's Prefect server.

Prefect reads ``PREFECT_API_URL`` once, when it is first imported: the command used to import the drift flows
before pointing Prefect at the config's server, so without ``PREFECT_API_URL`` in the environment it started a
temporary server of its own (and timed out on a loaded machine). Here the config names a stand-in API on loopback
that records what it is asked; the command runs in a fresh interpreter without ``PREFECT_API_URL``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_drift_report_asks_the_configs_prefect_server(tmp_path: Path) -> None:
    seen: list[str] = []

    class StandIn(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "classes": ["disc", "square"],
                                   "prefect": {"api_url": f"http://127.0.0.1:{port}/api"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DETLOOP_"))}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_CLIENT_MAX_RETRIES="0",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    proc = subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "drift", "report",
                             "--as-of", "2026-02-17", "--no-live", "--config", str(cfg)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: a temporary Prefect server it started goes too
        proc.wait()
        server.shutdown()
    assert seen, "the command never asked the config's Prefect API (it used a server of its own)"

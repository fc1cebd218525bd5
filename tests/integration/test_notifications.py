"""Notifications through a real Prefect automation: a custom-webhook notification block pointed at a
loopback HTTP server, the automations that `detloop serve` creates, and an event emitted like the flows do."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

pytestmark = pytest.mark.integration


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Hook.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_events_reach_the_configured_notification_block(stack_settings: Any) -> None:
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from detloop.settings import ConfigError
    from flows.common import EVENT_GATE_FAILED, notify
    from flows.notifications import NOTIFIED_EVENTS, automation_name, ensure_notifications

    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tag = uuid.uuid4().hex[:8]
    block_name = f"detloop-test-{tag}"
    CustomWebhookNotificationBlock(
        name="detloop test", url=f"http://127.0.0.1:{server.server_port}/hook",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save(block_name)
    s = stack_settings.model_copy(deep=True)
    s.prefect.notification_block = f"custom-webhook/{block_name}"
    try:
        names = ensure_notifications(s)
        assert ensure_notifications(s) == names  # second call updates in place
        assert names == [automation_name(e, s.prefect.notification_block) for e in NOTIFIED_EVENTS]
        for n in names:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                assert len(client.read_automations_by_name(name=n)) == 1  # no duplicates

        message = f"challenger v7 failed its gate ({tag})"
        notify(EVENT_GATE_FAILED, f"detloop.model.test-{tag}.7", {"version": "7"}, message)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(tag in r.get("body", "") for r in _Hook.received):
            time.sleep(1)
        got = [r for r in _Hook.received if tag in r.get("body", "")]
        assert got, f"no notification within 90 s (received: {_Hook.received})"
        assert got[0]["body"] == message and got[0]["subject"] == f"detloop: {EVENT_GATE_FAILED}"

        bad = s.model_copy(deep=True)
        bad.prefect.notification_block = f"custom-webhook/no-such-{tag}"
        with pytest.raises(ConfigError, match="no block"):
            ensure_notifications(bad)
    finally:
        for e in NOTIFIED_EVENTS:
            try:
                Automation.read(name=automation_name(e, s.prefect.notification_block)).delete()
            except ValueError:
                pass
        server.shutdown()

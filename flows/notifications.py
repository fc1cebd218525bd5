"""Notifications: one Prefect automation per detloop event, sending through a notification block.

detloop's flows emit events (:func:`flows.common.notify`): a round is ready for labelling, a challenger
failed its gate, a model was promoted (or rolled back), drift was detected (a new drift episode). The local default is the run's log and markdown
artifact. With ``prefect.notification_block: <block-type-slug>/<block-name>`` (any Prefect notification
block: Slack, Microsoft Teams, e-mail, a custom webhook, ...), ``detloop serve`` creates or updates one
automation per event whose action sends the event's message through that block; the Prefect server
fires it, so it works with whichever process emitted the event.
"""

from __future__ import annotations

from typing import Any

from detloop.settings import ConfigError, Settings
from flows.common import EVENT_DRIFT_DETECTED, EVENT_GATE_FAILED, EVENT_MODEL_PROMOTED, EVENT_ROUND_READY

NOTIFIED_EVENTS = (EVENT_ROUND_READY, EVENT_GATE_FAILED, EVENT_MODEL_PROMOTED, EVENT_DRIFT_DETECTED)
SUBJECT = "detloop: {{ event.event }}"
BODY = "{{ event.payload.message }}"


def automation_name(event: str, block: str) -> str:
    return f"detloop notify {event} via {block}"


def ensure_notifications(settings: Settings) -> list[str]:
    """Create or update the automations for ``settings.prefect.notification_block``; their names.

    Idempotent: an automation is found by name and updated in place, never duplicated. Nothing is
    done when no block is configured.

    Raises:
        ConfigError: the block does not exist on the Prefect server (the message names it and how to make one).
    """
    from prefect.automations import Automation, EventTrigger, SendNotification
    from prefect.blocks.core import Block

    block_name = settings.prefect.notification_block
    if not block_name:
        return []
    try:
        block = Block.load(block_name)
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"prefect.notification_block: no block {block_name!r} on the Prefect server at {settings.prefect.api_url} "
            "(create one in the UI under Blocks, or with the block class's .save())"
        ) from err
    block_id = getattr(block, "_block_document_id", None)
    if block_id is None:
        raise ConfigError(f"prefect.notification_block: {block_name!r} is not a saved block document")
    names = []
    for event in NOTIFIED_EVENTS:
        name = automation_name(event, block_name)
        wanted: dict[str, Any] = {
            "name": name,
            "description": f"detloop: send {event} events through {block_name}",
            "enabled": True,
            "trigger": EventTrigger(expect={event}, posture="Reactive", threshold=1),
            "actions": [SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
        }
        try:
            current = Automation.read(name=name)
        except ValueError:
            Automation(**wanted).create()
        else:
            for k, v in wanted.items():
                setattr(current, k, v)
            current.update()
        names.append(name)
    return names

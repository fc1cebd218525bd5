"""Thin, typed clients of the services detloop talks to, and the bundle a flow run passes down.

:class:`Clients` is built once per flow run (:meth:`Clients.from_settings`) and handed to every task
function; no ``tasks/`` module builds a client. Building is cheap: each client connects lazily, on its
first call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from detloop.clients.protocols import LabellingTool, ModelRegistry, ObjectStore

if TYPE_CHECKING:
    from detloop.settings import Settings

__all__ = ["Clients", "LabellingTool", "ModelRegistry", "ObjectStore"]


@dataclass
class Clients:
    """The object store, the labelling tool and the model registry of one configuration."""

    store: ObjectStore
    labels: LabellingTool
    registry: ModelRegistry

    @classmethod
    def from_settings(cls, settings: Settings) -> Clients:
        """The real clients for ``settings`` (S3, Label Studio, MLflow); nothing is contacted yet."""
        from detloop.clients.labelstudio import LabelStudioClient
        from detloop.clients.registry import RegistryClient
        from detloop.clients.s3 import S3Store

        return cls(store=S3Store(settings), labels=LabelStudioClient(settings), registry=RegistryClient(settings))

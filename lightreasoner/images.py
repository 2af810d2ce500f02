"""The one container image every component, the Helm chart and the schedule Job run in."""

from __future__ import annotations

import os

DEFAULT_IMAGE = "ghcr.io/lightreasoner/lightreasoner:0.1.0"


def image() -> str:
    """The image to run: env ``LIGHTREASONER_IMAGE`` when set, else :data:`DEFAULT_IMAGE`."""
    return os.environ.get("LIGHTREASONER_IMAGE") or DEFAULT_IMAGE

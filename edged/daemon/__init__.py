"""The daemon in parts: :mod:`.service` (wiring and lifecycle), :mod:`.supervisor` (systemd),
:mod:`.reload` (SIGHUP), :mod:`.views` (what it tells about itself)."""

from __future__ import annotations

from .service import Service

__all__ = ["Service"]

"""A stream's results: :func:`~edged.result.build_result` builds each (it lives beside
:class:`~edged.result.Result`, so that ``edged infer`` builds one without importing the streams)."""

from __future__ import annotations

from ..result import build_result

__all__ = ["build_result"]

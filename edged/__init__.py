"""edged: an edge inference daemon for Google Coral boards (Edge TPU with CPU fallback)."""

__version__ = "0.1.0"

"""The models edged bundles (installed as the ``edged.models`` package data)."""

"""The models edged bundles (installed as the ``edged.models`` package data; the training
scripts in ``models/training/`` are not installed)."""

"""Loaders for the papers' datasets, read with `datasets` from a hub id or a local path."""

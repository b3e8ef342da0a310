"""Synthetic tasks (being written)."""

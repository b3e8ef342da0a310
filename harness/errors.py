"""Errors the CLI turns into one clear line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, model spec, dataset row, missing file).

    The message names the offending field and how to fix it; the CLI prints it on
    one line and exits with code 2, with no traceback.
    """

    exit_code = 2


class ModelCallError(Exception):
    """A model call failed after retries. Recorded as an error row, never as a score."""

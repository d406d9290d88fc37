"""The one base class of every error meant for the user: the CLI prints its message and exits with its code.

A `UserError` says what was wrong with what the user gave (recipe, data, model, run directory, flag) and
exits 2; `RunEnded` reports a training run that ended other than completed (1: failed, 130: interrupted).
Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, phrased for them: file, key, row or flag, and what was expected."""

    exit_code = 2


class RunEnded(UserError):
    """A training run ended failed (exit 1) or interrupted (exit 130); the run directory records why."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

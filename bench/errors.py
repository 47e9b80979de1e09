"""User-facing errors: the CLI prints them as one line and exits with code 2."""
from __future__ import annotations

from typing import Optional


class BenchError(Exception):
    """Bad input from a user (unknown name, malformed option, unusable path): one clear line.

    ``param`` names the Python parameter at fault when there is one (``epochs``); the message then
    starts with that name, and the CLI shows its flag (``--epochs``) in its place.
    """

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


class RunFailed(Exception):
    """A single run failed for a reason worth recording (NaN loss, divergence); the suite goes on."""

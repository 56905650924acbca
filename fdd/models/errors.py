"""Errors raised by the model loaders."""

from __future__ import annotations

import os


class ModelLoadError(ValueError):
    """A weight file or folder cannot be used in the slot it was given to.

    The message always names the file and says what was expected, so a ComfyUI user can
    tell which loader input to change.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, expected: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.expected = expected
        where = f"'{self.path}'" if self.path else "model"
        msg = f"{where}: {problem}"
        if expected:
            msg += f" Expected: {expected}."
        super().__init__(msg)

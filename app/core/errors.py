"""The lab's one error base: what reaches a person says what happened and what to run."""

from __future__ import annotations


class LabError(RuntimeError):
    """A failure worded for the person who ran the command: what happened, what is safe, and
    the command that fixes it. Entry points print its message instead of a traceback."""

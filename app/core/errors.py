"""The lab's one error base: what reaches a person says what happened and what to run."""

from __future__ import annotations


class LabError(RuntimeError):
    """A failure worded for the person who ran the command: what happened, what is safe, and
    the command that fixes it. Entry points print its message instead of a traceback."""


# The exit status of a process that stopped because a service it needs does not answer, and
# asks to be started again once it does (sysexits' EX_TEMPFAIL). Live reload's watcher
# (`app.core.reload`) does that, with backoff.
EXIT_TRY_AGAIN = 75


class ServiceAway(LabError):
    """A service the process needs does not answer: nothing is lost, and the same command
    works again once the service is back (`task infra-up`)."""

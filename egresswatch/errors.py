"""Errors that end a command with a message meant for the user (printed without a traceback).

Each says what happened and what to do next. Exit code 2 everywhere means "could not tell".
"""

from __future__ import annotations


class EgressWatchError(Exception):
    """A failure the user can act on; str() is the whole message."""

    exit_code = 2


class SourceUnreachable(EgressWatchError):
    """Prometheus (or a proxy's metrics endpoint) did not answer."""


class QueryError(EgressWatchError):
    """Prometheus answered a query with an error, or with something that is not its API."""


class EmptyWindow(EgressWatchError):
    """No Istio samples at all in the window."""


class NoTraffic(EgressWatchError):
    """Istio samples exist, but none from the namespace asked for."""


class UsageError(EgressWatchError):
    """A bad flag value (window, URL)."""

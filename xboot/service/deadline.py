"""One deadline per request, across every backend call it makes.

A device (and the Functions host, and the client's own timeout) needs an answer in bounded time, whatever
the store does. The HTTP edge sets the deadline (`RequestDeadlineSeconds`, default 10); the Azure SDK
pipelines read it: each attempt's connect and read timeouts are cut to what is left, and no retry starts
after it. A request past its deadline answers 503 with Retry-After. Standard library only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

DEFAULT_SECONDS = 10
SETTING = "RequestDeadlineSeconds"
_deadline: ContextVar[float | None] = ContextVar("xboot_request_deadline", default=None)


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left for this request's backend calls; None outside a request (command-line tools, tests)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def cap(seconds: float) -> float:
    """`seconds`, or less if the request's deadline comes first (never below a token 10 ms)."""
    left = remaining()
    return seconds if left is None else max(0.01, min(seconds, left))


def passed(margin: float = 0.0) -> bool:
    """Whether the deadline is (or, after `margin` more seconds, would be) past."""
    left = remaining()
    return left is not None and left <= margin

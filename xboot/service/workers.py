"""`xboot serve --workers N`: N processes serving one listening socket, so that every core does work.

The parent binds the socket, loads the app and runs its checks once, then forks the workers (a
preloaded app, as gunicorn's `--preload`), and supervises them: a worker that dies is replaced, and
SIGTERM or SIGINT stops them all. Each worker first drops what it inherited that holds connections
(Azure SDK clients, opened data stores, the cached signer, upstream connections), so no socket to a
backend is shared between processes, and exits within half a second of its parent, so a parent
killed with SIGKILL leaves no worker behind still listening. Unix only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 0.5
RESTART_PAUSE_SECONDS = 1.0
STOP_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def forget_inherited_connections() -> None:
    """What a forked worker must not share with its parent or siblings: made again on first use."""
    from xboot.service import storage
    from xboot.service.azure import sdk
    from xboot.service.ca.issuers.transport import clear_connections
    from xboot.service.ca.signer import clear_signer_cache

    sdk.forget_clients()
    storage.forget_stores()
    clear_signer_cache()
    clear_connections()


def _die_with_parent(parent: int) -> None:
    """Exit once the parent is gone (its SIGKILL cannot be forwarded): a thread looks twice a second.
    Linux's PR_SET_PDEATHSIG would be immediate, but not every kernel or sandbox honours it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="xboot-parent-watch", daemon=True).start()


def _worker(serve: Callable[[], None], parent: int) -> None:
    """The forked child: never returns into the parent's code."""
    code = 0
    try:
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by the parent across the fork
        _die_with_parent(parent)
        forget_inherited_connections()
        serve()
    except BaseException:  # a worker reports and exits; the parent replaces it
        log.exception("worker %d failed", os.getpid())
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler: it ends the supervisor's wait (which Python would resume)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run_workers(serve: Callable[[], None], workers: int) -> int:
    """Fork `workers` processes that each run `serve()`; supervise until SIGTERM or SIGINT."""
    parent = os.getpid()
    children: set[int] = set()

    def start() -> None:
        """SIGTERM/SIGINT are held across the fork: one arriving mid-fork would otherwise raise inside an
        at-fork hook (where Python swallows it) or before the child is counted, and never stop anything."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _worker(serve, parent)
            children.add(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}
    try:
        for _ in range(workers):
            start()
        while True:
            pid, status = os.waitpid(-1, 0)
            children.discard(pid)
            log.error("worker %d exited (status %d); starting another", pid, status)
            time.sleep(RESTART_PAUSE_SECONDS)
            start()
    except _Stop:
        pass
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # stopping: a second signal must not cut the cleanup short
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                children.discard(pid)
            else:
                time.sleep(0.05)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0

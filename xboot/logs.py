"""Log levels for the process: xboot's own loggers at INFO, the Azure SDKs and waitress's queue quieter.

`XBOOT_LOG_LEVEL` (default INFO) sets xboot's level; only at DEBUG do the Azure SDKs log their requests
and headers (at INFO they dump every request and retry). Standard library only: the device side uses it.
"""

from __future__ import annotations

import logging
import os

QUIET = {"azure": logging.WARNING, "waitress.queue": logging.ERROR, "urllib3": logging.WARNING}


def level() -> int:
    name = (os.environ.get("XBOOT_LOG_LEVEL") or "INFO").upper()
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else logging.INFO


def quiet_libraries(chosen: int) -> None:
    """Below DEBUG, libraries that log every request log only their problems."""
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(logging.DEBUG if chosen <= logging.DEBUG else quiet)


def configure() -> None:
    """For the `xboot` command: one format, xboot's level, the libraries quieted."""
    chosen = level()
    logging.basicConfig(level=chosen, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries(chosen)

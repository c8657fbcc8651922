"""DataStore File: one file per object under `DataDirectory` (default `.xboot-data`).

Suits one instance (local runs, a single VM). Several Azure instances do not share a
disk: use Blob there.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, unquote

from xboot.errors import BackendUnavailable
from xboot.service.settings import Settings
from xboot.service.storage import check_key

DEFAULT_DIRECTORY = ".xboot-data"
TEMPORARY_PREFIX = ".tmp-"
ABANDONED_SECONDS = 600  # a temporary file lives microseconds; one this old was left by a killed writer


def _sync_directory(directory: Path) -> None:
    """fsync a folder, so that a name just linked or renamed into it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_abandoned(path: Path) -> None:
    """Temporary files a killed process left behind (never a live write's): removed as listings pass them."""
    try:
        if time.time() - path.stat().st_mtime > ABANDONED_SECONDS:
            path.unlink()
    except OSError:
        pass  # another lister removed it first, or it is not ours to remove


def _segment(name: str) -> str:
    return quote(name, safe="-_.=")  # ':' is not a portable file-name character


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*(_segment(s) for s in check_key(key).split("/")))

    def _temporary(self, path: Path, data: bytes) -> str:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            _sync_directory(path.parent.parent)  # the new folder's entry must survive too
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temporary

    def create(self, key: str, data: bytes) -> bool:
        """Durable before it returns True: the file's data, then its name in the folder, are fsynced."""
        path = self._path(key)
        try:
            temporary = self._temporary(path, data)
            try:
                os.link(temporary, path)  # atomic, and fails if the object exists
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
            _sync_directory(path.parent)
            return True
        except OSError as error:
            raise BackendUnavailable(f"data directory is not writable ({error.strerror})") from None

    def replace(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            os.replace(self._temporary(path, data), path)
            _sync_directory(path.parent)
        except OSError as error:
            raise BackendUnavailable(f"data directory is not writable ({error.strerror})") from None

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise BackendUnavailable(f"data directory is not readable ({error.strerror})") from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as error:
            raise BackendUnavailable(f"data directory is not writable ({error.strerror})") from None

    def list(self, prefix: str, *, after: str | None = None, limit: int | None = None) -> list[str]:
        directory = prefix.rpartition("/")[0]
        base = self._path(directory) if directory else self.root
        if not base.is_dir():
            return []
        keys: list[str] = []
        for path in base.rglob("*"):
            if path.name.startswith(TEMPORARY_PREFIX):
                _remove_if_abandoned(path)
                continue
            if path.is_file():
                relative = "/".join(unquote(p) for p in path.relative_to(self.root).parts)
                if relative.startswith(prefix) and (after is None or relative > after):
                    keys.append(relative)
        keys.sort()
        return keys if limit is None else keys[:limit]


def open_store(settings: Settings) -> FileStore:
    return FileStore(Path(settings.get("DataDirectory", DEFAULT_DIRECTORY) or DEFAULT_DIRECTORY).expanduser())

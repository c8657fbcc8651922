"""DataStore File: one file per object under `DataDirectory` (default `.xboot-data`).

Suits one instance (local runs, a single VM). Several Azure instances do not share a
disk: use Blob there.

Every write is durable before it is acknowledged: its data and its name in the folder reach the disk.
`DataSync` says how. `group` (the default where the kernel has syncfs(2), i.e. Linux): writers that
finish at the same time share one syncfs of the data directory's file system, so under concurrency a
record costs a fraction of a flush (group commit). `file`: each write fsyncs its file and its folder.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

from xboot.errors import BackendUnavailable, ConfigurationError
from xboot.service.settings import Settings
from xboot.service.storage import Page, check_key

DEFAULT_DIRECTORY = ".xboot-data"
TEMPORARY_PREFIX = ".tmp-"
SORTED_FOLDERS = 256  # folders whose sorted listing is kept (each until it changes)
RECENT_NS = 2_000_000_000  # a folder changed this recently is not cached: its mtime may not show a change yet
ABANDONED_SECONDS = 600  # a temporary file lives microseconds; one this old was left by a killed writer


def _sync_directory(directory: str) -> None:
    """fsync a folder, so that a name just linked or renamed into it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


SYNCFS = _syncfs()


class _Round:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: OSError | None = None


class GroupCommit:
    """Writers that are done writing wait for one flush that started after they finished.

    At most one flush runs; writers arriving meanwhile join the next round, which the first of them
    starts when the running one ends. No timer: at one writer a round is one flush, at many it is shared.
    """

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._condition = threading.Condition()
        self._pending: _Round | None = None
        self._running = False

    def commit(self) -> None:
        with self._condition:
            mine = self._pending
            if mine is None:
                mine = self._pending = _Round()
            while not mine.done:
                if self._running:
                    self._condition.wait()
                    continue
                self._running, self._pending = True, None  # this round starts; later writers join the next
                self._condition.release()
                try:
                    self._flush()
                except OSError as error:
                    mine.error = error
                finally:
                    self._condition.acquire()
                    mine.done, self._running = True, False
                    self._condition.notify_all()
        if mine.error is not None:
            raise mine.error


def _remove_if_abandoned(path: Path) -> None:
    """Temporary files a killed process left behind (never a live write's): removed as listings pass them."""
    try:
        if time.time() - path.stat().st_mtime > ABANDONED_SECONDS:
            path.unlink()
    except OSError:
        pass  # another lister removed it first, or it is not ours to remove


class FileStore:
    def __init__(self, root: Path, sync: str = "group") -> None:
        self.root = root
        self._prefix = f"{root}/"
        self._group: GroupCommit | None = None
        self._sorted: dict[str, tuple[tuple[int, int], list[tuple[str, str, bool]]]] = {}
        self._sorted_lock = threading.Lock()
        if sync == "group" and SYNCFS is not None:
            self._group = GroupCommit(self._syncfs)

    def _syncfs(self) -> None:
        assert SYNCFS is not None
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if SYNCFS(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
        finally:
            os.close(fd)

    def _path(self, key: str) -> str:
        """A plain string: the hot path makes two per enrollment. Keys hold only [A-Za-z0-9._:=-] (check_key);
        ':' is not a portable file-name character, so it is stored as %3A (what `list` unquotes)."""
        return self._prefix + check_key(key).replace(":", "%3A")

    def _temporary(self, path: str, data: bytes) -> tuple[str, bool]:
        """The data in a temporary file beside `path` (fsynced unless a group commit follows), and whether
        its folder had to be made."""
        folder = os.path.dirname(path)
        made = not os.path.isdir(folder)
        if made:
            os.makedirs(folder, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if self._group is None:
                handle.flush()
                os.fsync(handle.fileno())
        return temporary, made

    def _durable(self, path: str, made: bool) -> None:
        """The name just linked (and a folder just made) on disk: one shared flush, or two fsyncs."""
        if self._group is not None:
            self._group.commit()
            return
        folder = os.path.dirname(path)
        if made:
            _sync_directory(os.path.dirname(folder))  # the new folder's entry must survive too
        _sync_directory(folder)

    def create(self, key: str, data: bytes, *, flush: bool = True) -> bool:
        """Durable before it returns True: the file's data and its name in the folder are on disk.

        With `flush=False` under group commit nothing waits: the next flushed write's syncfs covers this
        one too. DataSync file fsyncs every write, asked or not.
        """
        flush = flush or self._group is None
        path = self._path(key)
        try:
            temporary, made = self._temporary(path, data)
            try:
                os.link(temporary, path)  # atomic, and fails if the object exists
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
            if flush:
                self._durable(path, made)
            return True
        except OSError as error:
            raise BackendUnavailable(f"data directory is not writable ({error.strerror})") from None

    def replace(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            temporary, made = self._temporary(path, data)
            os.replace(temporary, path)
            self._durable(path, made)
        except OSError as error:
            raise BackendUnavailable(f"data directory is not writable ({error.strerror})") from None

    def read(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise BackendUnavailable(f"data directory is not readable ({error.strerror})") from None

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as error:
            raise BackendUnavailable(f"data directory is not writable ({error.strerror})") from None

    def folder_version(self, prefix: str) -> int | None:
        """The folder's modification time: one stat. Lets the processes of one `xboot serve` see each
        other's revocations at once (a change within one timestamp tick can wait for the cache's TTL)."""
        try:
            return os.stat(self._path(prefix.rstrip("/"))).st_mtime_ns
        except FileNotFoundError:
            return 0
        except OSError as error:
            raise BackendUnavailable(f"data directory is not readable ({error.strerror})") from None

    def _entries(self, folder: str) -> list[tuple[str, str, bool]]:
        """(sort key, file name, is a folder) of one folder in key order, a folder sorting as `name/`.

        Cached until the folder changes, so paging through a folder that holds many keys sorts it once, not
        once per page. A folder's mtime moves in timestamp ticks (milliseconds), so two changes within one
        tick look like one: a folder changed in the last RECENT_NS is read afresh every time and cached only
        once it has been quiet that long (the current hour's folder of a log, say, never is; past days are).
        Abandoned temporary files are removed as listings pass them.
        """
        try:
            status = os.stat(folder)
        except FileNotFoundError:
            return []
        version = (status.st_ino, status.st_mtime_ns)
        cached = self._sorted.get(folder)
        if cached is not None and cached[0] == version:
            return cached[1]
        entries = []
        with os.scandir(folder) as scan:
            for item in scan:
                if item.name.startswith(TEMPORARY_PREFIX):
                    _remove_if_abandoned(Path(item.path))
                    continue
                is_folder = item.is_dir()
                name = unquote(item.name)
                entries.append((f"{name}/" if is_folder else name, item.name, is_folder))
        entries.sort()
        if time.time_ns() - status.st_mtime_ns < RECENT_NS:
            return entries
        with self._sorted_lock:
            if len(self._sorted) >= SORTED_FOLDERS:
                self._sorted.clear()
            self._sorted[folder] = (version, entries)
        return entries

    def _walk(self, folder: str, key_prefix: str, after: str | None, start: str) -> Iterator[str]:
        """Keys under `folder` (whose keys begin `key_prefix`) in ascending order, strictly after `after`
        (a key under this folder, or None) and, at this level, from `start` on. Folders wholly before
        `after` are never opened."""
        entries = self._entries(folder)
        target = start
        if after is not None:
            head, slash, _ = after[len(key_prefix) :].partition("/")
            target = max(target, head + slash)
        first = bisect.bisect_left(entries, (target,))  # (target,) sorts before any entry whose key is target
        for sort_key, name, is_folder in itertools.islice(entries, first, None):
            key = key_prefix + sort_key
            if is_folder:
                inside = after if after is not None and after.startswith(key) else None
                yield from self._walk(f"{folder}/{name}", key, inside, "")
            elif after is None or key > after:
                yield key

    def _keys(self, prefix: str, after: str | None) -> Iterator[str]:
        directory, _, start = prefix.rpartition("/")
        base = self._path(directory) if directory else str(self.root)
        key_prefix = f"{directory}/" if directory else ""
        try:
            for key in self._walk(base, key_prefix, after, start):
                if not key.startswith(prefix):
                    return  # past the prefix: keys come in order
                yield key
        except NotADirectoryError:
            return
        except OSError as error:
            raise BackendUnavailable(f"data directory is not readable ({error.strerror})") from None

    def list(self, prefix: str) -> list[str]:
        return list(self._keys(prefix, None))

    def page(self, prefix: str, limit: int, marker: str | None = None) -> Page:
        """The marker is the last key of the previous page."""
        if marker is not None and not marker.startswith(prefix):
            raise ValueError("marker from another listing")
        keys = list(itertools.islice(self._keys(prefix, marker), limit + 1))
        return Page(keys[:limit], keys[limit - 1] if len(keys) > limit else None)


SYNC_SETTING = "DataSync"


def open_store(settings: Settings) -> FileStore:
    sync = (settings.get(SYNC_SETTING) or "group").lower()
    if sync not in ("group", "file"):
        raise ConfigurationError(f"setting {SYNC_SETTING} must be group or file")
    root = Path(settings.get("DataDirectory", DEFAULT_DIRECTORY) or DEFAULT_DIRECTORY).expanduser()
    return FileStore(root, sync)

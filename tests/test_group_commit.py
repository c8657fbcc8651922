"""DataSync group: concurrent File-store writers share a syncfs of the data directory's file system, and
none is acknowledged before a flush that began after its write had finished."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import xboot.service.storage.file as file_store
from xboot.errors import BackendUnavailable, ConfigurationError
from xboot.service.settings import Settings
from xboot.service.storage.file import FileStore, GroupCommit, open_store

pytestmark = pytest.mark.skipif(file_store.SYNCFS is None, reason="no syncfs(2) on this system")


class Flushes:
    """Stands in for syncfs: records what exists when each flush starts, takes `seconds`, can fail."""

    def __init__(self, root: Path, seconds: float = 0.0) -> None:
        self.root, self.seconds = root, seconds
        self.started: list[set[str]] = []
        self.completed: list[set[str]] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> int:
        snapshot = {p.name for p in self.root.rglob("*.json")}
        with self.lock:
            self.started.append(snapshot)
        time.sleep(self.seconds)
        if self.fail:
            return -1
        with self.lock:
            self.completed.append(snapshot)
        return 0


@pytest.fixture
def flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flushes:
    recorder = Flushes(tmp_path, seconds=0.02)
    monkeypatch.setattr(file_store, "SYNCFS", recorder)
    return recorder


def test_a_write_is_one_flush_after_its_link_and_no_fsync(tmp_path, flushes, monkeypatch):
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", fsyncs.append)
    store = FileStore(tmp_path)
    assert store.create("a/b/c.json", b"{}")
    store.replace("a/b/d.json", b"[]")
    assert flushes.started == [{"c.json"}, {"c.json", "d.json"}] and fsyncs == []
    assert not store.create("a/b/c.json", b"{}")  # exists: no flush needed, nothing acknowledged
    assert len(flushes.started) == 2


def test_concurrent_writers_share_flushes_and_each_waits_for_one_that_saw_it(tmp_path, flushes):
    store = FileStore(tmp_path)
    covered: list[bool] = []
    barrier = threading.Barrier(32)

    def write(n: int) -> None:
        barrier.wait()
        assert store.create(f"certificates/dev/{n:04d}.json", b"{}")
        with flushes.lock:  # acknowledged: some completed flush began after this file existed
            covered.append(any(f"{n:04d}.json" in snapshot for snapshot in flushes.completed))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(write, range(32)))
    assert covered == [True] * 32
    assert len(flushes.started) <= 8  # 32 writers, 20 ms per flush: a handful of rounds, not 32


def test_a_failed_flush_fails_every_writer_of_its_round(tmp_path, flushes):
    store = FileStore(tmp_path)
    flushes.fail = True
    with pytest.raises(BackendUnavailable, match="not writable"):
        store.create("x/1.json", b"{}")
    flushes.fail = False
    assert store.create("x/2.json", b"{}")


def test_the_group_runs_one_flush_at_a_time():
    running, most = [0], [0]
    lock = threading.Lock()

    def flush() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1

    group = GroupCommit(flush)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: group.commit(), range(200)))
    assert most[0] == 1


def test_the_real_syncfs_works_here(tmp_path):
    store = FileStore(tmp_path)
    assert store._group is not None
    assert store.create("r/1.json", b"{}") and store.read("r/1.json") == b"{}"


def test_data_sync_setting(tmp_path):
    assert open_store(Settings({"DataDirectory": str(tmp_path)}))._group is not None
    assert open_store(Settings({"DataDirectory": str(tmp_path), "DataSync": "File"}))._group is None
    with pytest.raises(ConfigurationError, match="DataSync must be group or file"):
        open_store(Settings({"DataDirectory": str(tmp_path), "DataSync": "never"}))

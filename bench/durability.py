"""9. Durable writes: audit-record-sized File-store creates on disk, DataSync file vs group, 1/8/64 writers.

Each writer thread creates its own records (4 KB, the size of an audit record with its certificate) in
the data directory the service would use, on the benchmark's scratch disk. `file` fsyncs each file and
its folder; `group` shares one syncfs(2) among the writers done at the same time. Printed: records/s,
microseconds of wall time per record, and flushes per record (syncfs calls counted).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xboot.service.storage.file as file_store
from xboot.service.storage.file import FileStore

WRITERS = (1, 8, 64)
RECORD = b'{"pad": "' + b"x" * 4000 + b'"}'


def _run(root: Path, sync: str, writers: int, per_writer: int) -> dict[str, Any]:
    store = FileStore(root, sync)
    flushes = [0]
    if store._group is not None:
        real = store._group._flush

        def counted() -> None:
            flushes[0] += 1
            real()

        store._group._flush = counted
    barrier = threading.Barrier(writers)

    def write(worker: int) -> None:
        barrier.wait()
        for n in range(per_writer):
            assert store.create(f"certificates/w{worker:02d}/{n:06d}.json", RECORD)

    began = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    elapsed = time.perf_counter() - began
    total = writers * per_writer
    return {
        "sync": sync,
        "writers": writers,
        "records": total,
        "records_per_second": round(total / elapsed, 1),
        "us_per_record": round(elapsed / total * 1e6, 1),
        "flushes_per_record": round(flushes[0] / total, 3) if sync == "group" else None,
    }


def run(work: Path, quick: bool) -> dict[str, Any]:
    if file_store.SYNCFS is None:
        return {"pending": "no syncfs(2) here: DataSync group falls back to file"}
    total = 400 if quick else 2000
    rows = []
    for writers in WRITERS:
        for sync in ("file", "group"):
            rows.append(_run(work / f"{sync}-{writers}", sync, writers, max(1, total // writers)))
    return {"rows": rows}


def table(result: dict[str, Any]) -> list[str]:
    if "pending" in result:
        return [f"  skipped: {result['pending']}"]
    lines = [f"  {'DataSync':<8} {'writers':>7} {'records/s':>10} {'us/record':>10} {'flushes/record':>15}"]
    for row in result["rows"]:
        flushes = "" if row["flushes_per_record"] is None else f"{row['flushes_per_record']:.3f}"
        lines.append(
            f"  {row['sync']:<8} {row['writers']:>7} {row['records_per_second']:>10.0f} {row['us_per_record']:>10.1f} "
            f"{flushes:>15}"
        )
    return lines

"""The prediction files of a run: per-rank JSONL shards, appended line by line, merged at the end.

Each line is written with one ``write`` of a complete line and flushed and fsync'ed, so a kill can at
worst leave a partial last line; readers drop a line that is not a complete JSON object (and the
next append starts on a fresh line), so a half-written result is never parsed as a result. Finished
samples are what make a run resumable: their ids are skipped on restart.

One run per output directory: ``exclusive_output_dir`` holds an OS lock (``flock``) on ``run.lock``
for the whole run. The kernel drops it when the process ends, however it ends, so a killed run never
leaves a stale lock; a second run on a busy directory stops at once, naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

MERGED = "predictions.jsonl"
LOCK = "run.lock"


class OutputDirInUse(RuntimeError):
    """Another live process is running on this output directory."""


@contextlib.contextmanager
def exclusive_output_dir(directory: str | Path) -> Iterator[None]:
    """Hold ``<directory>/run.lock`` for the duration; raise OutputDirInUse at once if another process does.

    The file holds the holder's pid (for the message); the lock itself is the ``flock``, which dies with
    its process, so the file left behind after a run or a kill blocks nothing.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise OutputDirInUse(
                f"output_dir {directory} is in use by another run (pid {holder}); wait for it to finish, "
                f"or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Complete JSON lines of ``path``; a torn or corrupt line is skipped."""
    if not path.exists():
        return []
    rows = []
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn last line from a kill
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "sample_id" in row:
                rows.append(row)
    return rows


class PredictionStore:
    """Reads and writes the prediction shards of one output directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def shard(self, rank: int) -> Path:
        return self.directory / f"predictions.rank{rank}.jsonl"

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("predictions.rank*.jsonl"))

    def append(self, predictions: Iterable[dict], rank: int = 0) -> None:
        path = self.shard(rank)
        payload = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
        if not payload:
            return
        with path.open("a+", encoding="utf-8") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(fh.tell() - 1)
                if fh.read(1) != "\n":
                    fh.write("\n")  # seal a torn line left by a kill
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())

    def load(self) -> list[dict]:
        """All finished predictions, one per sample id (first written wins), in writing order."""
        seen: dict[str, dict] = {}
        for path in self.files():
            for row in read_jsonl(path):
                seen.setdefault(row["sample_id"], row)
        return list(seen.values())

    def done_ids(self) -> set[str]:
        return {row["sample_id"] for row in self.load()}

    def merge(self) -> Path:
        """Write the deduplicated union of all shards to ``predictions.jsonl`` (atomically)."""
        rows = sorted(self.load(), key=lambda r: r["sample_id"])
        target = self.directory / MERGED
        tmp = target.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(target)
        return target

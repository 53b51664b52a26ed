"""The recipes' files: byte-stable JSON lines written atomically, append-only partial files that survive kill -9,
an exclusive lock on the run directory, and one-line errors for a full disk or read-only storage."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path

# Writing failures a user fixes outside the program: reported in one line, the run resumable afterwards.
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EFBIG: "a file grew beyond the allowed size", errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied"}


def dumps(row: dict) -> str:
    """One JSON line with the keys in the order given (byte-stable)."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class PartialFile:
    """Append-only ``<final>.partial`` of complete rows; ``finish()`` moves it to ``<final>``."""

    def __init__(self, final: Path):
        self.final = final
        self.path = final.with_name(final.name + ".partial")
        self.rows: list[dict] = []
        if self.path.exists():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1  # drop a torn last line
            for line in data[:end].decode("utf-8").splitlines():
                if line.strip():
                    self.rows.append(json.loads(line))
            if end != len(data):
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(dumps(r) for r in rows))
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.extend(rows)

    def finish(self) -> None:
        if not self.path.exists():
            self.path.write_text("")
        os.replace(self.path, self.final)


def lock_directory(out: Path):
    """An exclusive lock on ``out`` for the whole run (released by the OS even after kill -9); the open lock file
    is returned (close it to release). A second run is refused and told who holds it."""
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise ValueError(f"{out} is in use by another run ({holder}); wait for it to finish, or use another "
                         "--output") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    fh.flush()
    return fh


def writable(path: Path) -> bool:
    """Whether files can be created in ``path`` (tried, not guessed from permission bits: root ignores those)."""
    try:
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def disk_error(err: OSError, out: Path) -> ValueError:
    """A one-line error for a write the user must make possible; the run resumes where it stopped."""
    what = DISK_ERRORS.get(err.errno, err.strerror or str(err))
    where = err.filename or out
    return ValueError(f"cannot write {where}: {what}. Make room (or make {out} writable) and re-run the same command: "
                      "finished stages and saved chunks are kept")

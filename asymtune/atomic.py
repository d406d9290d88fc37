"""Atomic writes: a reader sees the old state or the complete new one, never a partial file."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def directory(target: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `target`; on success it becomes `target`. An existing `target` (a resumed
    run saving its adapter again) is swapped with it in one step, then removed: a reader sees one or the other.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield scratch
        if target.is_dir() and not target.is_symlink():
            _exchange(scratch, target)  # scratch now holds the old folder
        else:
            os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _exchange(first: Path, second: Path) -> None:
    """Swap two paths: atomically with Linux's renameat2(RENAME_EXCHANGE); elsewhere (macOS, Windows, filesystems
    without it) by three renames, a window in which `second` is briefly missing."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        at_cwd, rename_exchange = -100, 2
        if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
            return
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS):  # not an unsupported filesystem
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(second))
    parked = first.with_name(first.name.removesuffix(".tmp") + ".old.tmp")
    os.replace(second, parked)
    os.replace(first, second)
    os.replace(parked, first)


def _renameat2():
    """The C library's renameat2, None where there is none (macOS, musl before 1.2.5, Windows: no C library)."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # Windows: CDLL(None) is a TypeError
        return None


def blocking_file(target: Path) -> Path | None:
    """The first parent of `target` that exists and is not a folder (so `target` cannot be made), if any."""
    return next((parent for parent in target.parents if parent.exists() and not parent.is_dir()), None)

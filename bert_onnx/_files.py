"""Crash-safe file writing: write beside the target, fsync, then rename over it in one step."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, is_dir: bool) -> None:
    # mkstemp/mkdtemp create private (0600/0700) entries; give the result the permissions a plain open() would.
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``.

    Readers see either the old file or the complete new one, never a partial file; on error nothing changes.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _default_mode(Path(tmp_name), is_dir=False)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


@contextlib.contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` (same filesystem, so it can be renamed into place).

    Removed on error; the caller installs it with :func:`install_dir` before the context ends.
    """
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    _default_mode(tmp, is_dir=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def install_dir(staged: Path, target: str | Path, replace: bool) -> None:
    """Rename ``staged`` to ``target``. With ``replace``, an existing ``target`` is swapped out first.

    The old folder is moved aside and deleted only after the new one is in place, so a crash at any point leaves
    either the old folder or the new one at ``target`` (plus, at worst, a hidden ``.old`` folder to delete).
    """
    target = Path(target)
    if not target.exists():
        os.rename(staged, target)
        _fsync_dir(target.parent)
        return
    if not replace:
        raise FileExistsError(f"{target} already exists; pass --force (force=True) to replace it")
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)

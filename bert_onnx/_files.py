"""Crash-safe file writing: write beside the target, fsync, then rename over it in one step."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from glob import escape as glob_escape
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


def _owner() -> str:
    """This process, as a staging folder's name records it: ``HOST-PID`` (the host letters and digits only)."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]
    return f"{host}-{os.getpid()}"


def _staging_pattern(target: Path) -> re.Pattern[str]:
    """Names :func:`staging_dir` gives ``target``'s staging folders: ``.NAME.HOST-PID-RANDOM.partial``."""
    return re.compile(rf"\.{re.escape(target.name)}\.(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[a-z0-9_]+\.partial")


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (a process we may not signal exists too)."""
    if os.name == "nt" or pid == os.getpid():  # on Windows os.kill(pid, 0) would end the process: keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` (same filesystem, so it can be renamed into place), named
    ``.NAME.HOST-PID-RANDOM.partial`` so that :func:`remove_stale_staging` can tell when its owner is gone.

    Removed on error; the caller installs it with :func:`install_dir` before the context ends.
    """
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_owner()}-", suffix=".partial", dir=target.parent))
    _default_mode(tmp, is_dir=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_staging(target: str | Path) -> list[Path]:
    """Remove the staging folders of ``target`` that a killed process left (``kill -9``, a power cut: no ``finally``
    ran), and return them. Only folders this machine's processes made, whose process is gone, are removed; one of a
    running process or of another host (a shared filesystem) is left alone."""
    target = Path(target)
    pattern, host = _staging_pattern(target), _owner().rsplit("-", 1)[0]
    removed = []
    for entry in sorted(target.parent.glob(f".{glob_escape(target.name)}.*.partial")):
        match = pattern.fullmatch(entry.name)
        if match is None or match["host"] != host or entry.is_symlink() or not entry.is_dir():
            continue
        if not _running(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


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

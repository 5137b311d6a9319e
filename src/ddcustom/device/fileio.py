"""Bounded reads and atomic writes of the files the component and the inference meter use.

Reads never take more than ``limit`` bytes. ``read_regular`` is for files that others control (the
feedback files): what is not a regular file is refused before it is opened (a FIFO would block, /dev/zero
never ends), it is opened with O_NONBLOCK and checked again once open (a file swapped in between is caught).

Writes replace the file by a temporary one from the same directory: readers see the old content or the
new, never a part. Durability rule: what must survive a power loss is written ``durable=True``, with the
file fsynced before the rename and its directory after: the alerts in the spool (never lost), the open
alarms (each one ends after a restart) and the last report id (ids only grow, even when the clock steps
back). Values rewritten every few seconds that only describe the present (the meter's feedback files) are
not: their writer stops with the power too, and an fsync every few seconds would wear an edge device's
flash storage for nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


class NotRegularFile(OSError):
    """``read_regular`` met something else than a regular file; the message says what."""


def read_bounded(path: PathLike, limit: int, *, one_read: bool = False) -> bytes:
    """At most ``limit`` bytes of ``path``, read to the end (/proc gives a page per read). ``one_read``:
    a single read, for the per-process /proc files that the kernel hands out whole (stat, cmdline):
    the read that would find the end costs a system call per process per cycle."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if one_read:
            return os.read(fd, limit)
        data = bytearray()
        while len(data) < limit:
            chunk = os.read(fd, min(1 << 20, limit - len(data)))
            if not chunk:
                break
            data += chunk
        return bytes(data)
    finally:
        os.close(fd)


def read_text(path: PathLike, limit: int) -> str:
    """``read_bounded`` as text, bytes that are not UTF-8 replaced."""
    return read_bounded(path, limit).decode("utf-8", "replace")


def read_regular(path: PathLike, limit: int) -> tuple[bytes, os.stat_result]:
    """At most ``limit`` bytes of the regular file ``path``, and its fstat; never blocks."""
    _refuse_non_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        _refuse_non_regular(info.st_mode)
        return os.read(fd, limit), info
    finally:
        os.close(fd)


def write_atomic(path: PathLike, data: bytes, *, durable: bool, mode: int = 0o600) -> None:
    """Replace ``path`` by a file holding ``data`` with permissions ``mode``; see the durability rule."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            os.fchmod(fd, mode)  # mkstemp makes 0600 whatever the umask
            if durable:
                f.flush()
                os.fsync(fd)
        os.replace(temp, path)
        if durable:
            fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def fsync_directory(directory: PathLike) -> None:
    """Make a new name in ``directory`` (a rename, a new file or folder) survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_non_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFile(_KINDS.get(stat.S_IFMT(mode), "a device"))

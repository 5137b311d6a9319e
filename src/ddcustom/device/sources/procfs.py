"""The per-process files of /proc that every reader of processes parses: ``stat`` and ``cmdline``."""

from __future__ import annotations

from ddcustom.device.fileio import read_bounded

STAT_BYTES = 4096
CMDLINE_BYTES = 4096


def parse_stat(text: str) -> tuple[str, int, int, int]:
    """(comm, ppid, utime + stime, starttime) of a /proc/<pid>/stat line. comm may hold spaces and
    parentheses: it ends at the last ')'. Fields a short line lacks count as 0."""
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError(f"malformed stat line: {text[:60]!r}")
    comm = head.partition("(")[2]
    fields = tail.split(None, 20)  # state, ppid, ... utime at 11, stime at 12, starttime at 19; the rest
    numbers = [int(fields[i]) if len(fields) > i else 0 for i in (11, 12, 19)]
    return comm, int(fields[1]), numbers[0] + numbers[1], numbers[2]


def exiting(text: str) -> bool:
    """Whether a /proc/<pid>/stat line is of a process that is exiting: a zombie (Z) or dead (X), which
    keeps its /proc folder but no longer its executable or its mappings."""
    return text.rpartition(")")[2].split()[:1] in (["Z"], ["X"])


def parse_cmdline(raw: bytes) -> list[str]:
    """Arguments of /proc/<pid>/cmdline (NUL-separated; a process may have rewritten it with spaces)."""
    return [arg.decode("utf-8", "replace") for arg in raw.rstrip(b"\0").split(b"\0")] if raw else []


def read_cmdline(path: str) -> list[str]:
    """The arguments in the /proc/<pid>/cmdline file at ``path`` (its first CMDLINE_BYTES); none when it
    cannot be read (the process is gone)."""
    try:
        return parse_cmdline(read_bounded(path, CMDLINE_BYTES, one_read=True))
    except OSError:
        return []


def argv0_name(argv: list[str]) -> str:
    """The base name of argv[0]; "" for no arguments (a kernel thread)."""
    return argv[0].rpartition("/")[2] if argv else ""

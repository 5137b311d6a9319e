"""What a process runs: its executable identity, the unit the baseline learns executables by.

An identity is the resolved ``/proc/PID/exe`` path and the SHA-256 of that file; for an interpreter
(python, perl, node, ruby, php, lua, java, the shells...) also the script or module it runs, taken from
``/proc/PID/cmdline``, so ``python3 /dev/shm/x.py`` is not the known ``python3``:

- the first argument that is not an option is the script; a relative path is resolved against
  ``/proc/PID/cwd``, and the script's SHA-256 is part of the identity when it is a readable regular file;
- ``python -m NAME`` gives ``-m NAME``; ``java -jar X`` the jar X; ``java CLASS`` gives ``class CLASS``;
- code on the command line (``-c``, ``-e``, ``-r``) gives ``inline code``: every ``sh -c ...`` is the
  same identity, whatever the command (keying on the code would make every shell command new);
- ``-`` or ``sh -s`` gives ``stdin``; no argument at all (an interactive shell) gives no script.

The option syntax of each interpreter is known well enough to skip options that take a value; it is
not a full parser. A misread gives a different script, hence an identity the baseline does not know.

An executable that is deleted (the exe link ends with `` (deleted)``: replaced or removed since it was
started), runs from a memfd (``/memfd:``: never was a file), is over MAX_HASH_BYTES, or cannot be read is
never "known": ``reason_unknowable`` says why and the store never learns or matches it.

Hashes are computed once per (st_dev, st_ino, st_size, st_mtime_ns) and kept in a bounded LRU cache.
Per cycle a process costs one readlink of its exe link (plus, for interpreters, reading its cmdline
when the caller does not pass it); its files are stat'ed again every RECHECK_SECONDS, or at once when
the link or an interpreter's command line changes (an exec). The file is read through
``/proc/PID/exe`` and scripts through ``/proc/PID/root``, so processes in containers are hashed right.

A process that executes another program while it is read would show parts of both (the old exe link,
the new command line or file): the link is read again after the rest, and a change gives None, the
process judged at the next read. So does an interpreter read the first time with an empty command line
(right after an exec, before the kernel set up its arguments).

Usage::

    reader = IdentityReader()           # proc_root="/proc"
    identity = reader.read(pid)         # None: gone, a kernel thread, a zombie, or in the middle of an exec
    identity.key, identity.knowable, identity.reason_unknowable
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import quote

from ddcustom.device.fileio import read_bounded
from ddcustom.device.sample import ProcessInfo
from ddcustom.device.sources.privileged.client import PrivilegedReader
from ddcustom.device.sources.privileged.protocol import GONE, NO_PROGRAM
from ddcustom.device.sources.procfs import STAT_BYTES, exiting, parse_stat, read_cmdline

MAX_HASH_BYTES = 512 * 1024 * 1024
MAX_HASH_SECONDS = 30.0  # a file slower than this to read (a stuck network mount) is not waited for
HASH_CHUNK = 1024 * 1024
CACHE_SIZE = 4096
# A process whose exe link and command line are unchanged keeps its identity this long before its files
# are looked at again (stat): only a process that execs a file replaced at the same path goes unseen
# that long. Hashes themselves are per file version, never per cycle.
RECHECK_SECONDS = 60.0

# Why an identity can never be known.
DELETED = "deleted"
MEMFD = "memfd"
NOT_A_FILE = "not a file"
TOO_LARGE = "too large"
UNREADABLE = "unreadable"
NO_ACCESS = "no access"  # the exe link itself cannot be read: the component lacks the privilege

DELETED_SUFFIX = " (deleted)"

# Script forms that are not paths.
INLINE = "inline code"
STDIN = "stdin"
MODULE_PREFIX = "-m "
CLASS_PREFIX = "class "

_KEY_SAFE = "/:@!$&'()*+,;=-._~"  # everything printable but space and % stays as it is in a key


@dataclass(frozen=True)
class ExecutableIdentity:
    path: str  # resolved executable path (without " (deleted)")
    sha256: str  # hex; "" when unknowable
    script: str = ""  # interpreters: the script's absolute path, "-m NAME", "class NAME", INLINE, STDIN
    script_sha256: str = ""  # hex, when the script is a readable regular file
    reason_unknowable: str = ""  # "" when the identity can be known
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", identity_key(self.path, self.sha256, self.script, self.script_sha256))

    @property
    def knowable(self) -> bool:
        return not self.reason_unknowable

    @property
    def content_sha256(self) -> str:
        """The hash that says what runs: the script's for an interpreter running a file, else the exe's."""
        return self.script_sha256 if self.script else self.sha256

    @property
    def content_path(self) -> str:
        """The path that says what runs: the script's for an interpreter running a file, the exe's for a
        program, "" for an interpreter running a module or inline code (no file says what runs)."""
        if not self.script:
            return self.path
        return self.script if self.script.startswith("/") else ""

    @property
    def program_sha256(self) -> str:
        """The one SHA-256 that names what runs (``program_sha256``); "" when unknowable."""
        return program_sha256(self.sha256, self.script, self.script_sha256) if self.knowable else ""

    def details(self) -> dict[str, str]:
        """The entry details the store keeps (and alerts can show)."""
        details = {"path": self.path, "sha256": self.sha256}
        if self.script:
            details["script"] = self.script
            if self.script_sha256:
                details["script_sha256"] = self.script_sha256
        return details


def program_sha256(sha256: str, script: str = "", script_sha256: str = "") -> str:
    """The one SHA-256 that names what runs, as the fleet inventory sends it and FleetKnownExecutables
    lists it: the executable's for a program, the script's for an interpreter running a script file it
    can read, else the SHA-256 of the text "<interpreter's SHA-256> <script>" (a module, inline code,
    stdin: no file says what runs). "" without the executable's SHA-256."""
    if not script:
        return sha256
    if script_sha256:
        return script_sha256
    if not sha256:
        return ""
    return hashlib.sha256(f"{sha256} {script}".encode("utf-8", "surrogateescape")).hexdigest()


def identity_key(path: str, sha256: str, script: str = "", script_sha256: str = "") -> str:
    """``<sha256> <path>`` or ``<sha256> <path> <script sha256 or -> <script>``.

    Paths are percent-quoted (space, %, control and non-ASCII bytes), so the space-separated key is
    unambiguous whatever a path holds; ordinary paths read as they are.
    """
    key = f"{sha256 or '-'} {_quoted(path)}"
    if script:
        key += f" {script_sha256 or '-'} {_quoted(script)}"
    return key


def _quoted(path: str) -> str:
    # names that are not UTF-8 come from the kernel as surrogates: quote their original bytes
    return quote(path, safe=_KEY_SAFE, errors="surrogateescape")


# ---- interpreters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Syntax:
    """How one interpreter's options are written: which take a value, which run code or a module."""

    inline: str = ""  # short options whose value is code (-c, -e)
    module: str = ""  # short options whose value names what runs (python -m, php -f)
    value: str = ""  # short options taking a value: the rest of the argument, or the next argument
    attached: str = ""  # short options whose value, possibly empty, is the rest of the argument
    digits: str = ""  # short options followed by optional digits (perl -l, -0)
    stdin: str = ""  # short options that make it read its program from stdin (sh -s)
    long_inline: frozenset[str] = frozenset()
    long_values: frozenset[str] = frozenset()  # long options taking the next argument (unless --x=v)
    plus_options: bool = False  # shells: +x is an option too


_PYTHON = _Syntax(inline="c", module="m", value="WX", long_values=frozenset({"--check-hash-based-pycs"}))
_SHELL = _Syntax(
    inline="c", value="oO", stdin="s", long_values=frozenset({"--rcfile", "--init-file"}), plus_options=True
)
_PERL = _Syntax(inline="eE", attached="MmIidxCDV", digits="l0")
_RUBY = _Syntax(inline="e", value="rICE", attached="FKTWx", digits="0")
_NODE = _Syntax(
    inline="ep",
    value="rC",
    long_inline=frozenset({"--eval", "--print"}),
    long_values=frozenset(
        {"--require", "--import", "--loader", "--experimental-loader", "--input-type", "--title"}
        | {"--conditions"}
    ),
)
_PHP = _Syntax(inline="rBRFE", module="f", value="cdzSt")
_LUA = _Syntax(inline="e", value="l")
_TCL = _Syntax()

_INTERPRETERS: tuple[tuple[re.Pattern[str], _Syntax], ...] = (
    (re.compile(r"(?:python|pypy)[0-9.]*[dmu]*"), _PYTHON),
    (re.compile(r"(?:ba|da|z|k|mk|a)?sh"), _SHELL),
    (re.compile(r"perl[0-9.]*"), _PERL),
    (re.compile(r"ruby[0-9.]*"), _RUBY),
    (re.compile(r"node(?:js)?"), _NODE),
    (re.compile(r"php[0-9.]*(?:-cli)?"), _PHP),
    (re.compile(r"lua(?:jit)?[0-9.]*"), _LUA),
    (re.compile(r"(?:tclsh|wish)[0-9.]*|Rscript"), _TCL),
)
_SHELL_NAMES = re.compile(r"(?:ba|da|z|k|mk|a)?sh")

_JAVA_VALUE_OPTIONS = frozenset(
    {
        "-cp", "-classpath", "--class-path", "-p", "--module-path", "--upgrade-module-path",
        "--add-modules", "--add-reads", "--add-exports", "--add-opens", "--limit-modules",
        "--patch-module", "--source", "--enable-native-access",
    }
)  # fmt: skip


def interpreter_syntax(exe_path: str, argv0: str = "") -> Optional[_Syntax]:
    """The option syntax of the interpreter ``exe_path`` is, or None when it is no interpreter we know.

    busybox is a shell when argv[0] names one (``sh`` linked to busybox)."""
    name = os.path.basename(exe_path)
    if name == "busybox":
        return _SHELL if _SHELL_NAMES.fullmatch(os.path.basename(argv0).lstrip("-")) else None
    for pattern, syntax in _INTERPRETERS:
        if pattern.fullmatch(name):
            return syntax
    return None


def runs_scripts(exe_path: str) -> bool:
    """Whether what ``exe_path`` runs depends on its command line (an interpreter, java, busybox)."""
    return os.path.basename(exe_path) in ("java", "busybox") or interpreter_syntax(exe_path) is not None


def script_argument(args: list[str], syntax: _Syntax) -> tuple[str, str]:
    """(form, value) of what an interpreter command line runs: ("path", P), ("module", M),
    ("inline", ""), ("stdin", "") or ("", "") for nothing (an interactive interpreter)."""
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg == "-":
            return "stdin", ""
        if arg.startswith("--"):
            name, equals, _ = arg.partition("=")
            if name in syntax.long_inline:
                return "inline", ""
            i += 2 if (name in syntax.long_values and not equals) else 1
            continue
        if arg.startswith("-") or (syntax.plus_options and arg.startswith("+") and len(arg) > 1):
            letters = arg[1:]
            j = 0
            skip_next = False
            while j < len(letters):
                letter, rest = letters[j], letters[j + 1 :]
                if letter in syntax.inline:
                    return "inline", ""
                if letter in syntax.module:
                    value = rest or (args[i + 1] if i + 1 < len(args) else "")
                    return "module", value
                if letter in syntax.stdin:
                    return "stdin", ""
                if letter in syntax.value:
                    skip_next = not rest
                    break
                if letter in syntax.attached:
                    break
                j += 1
                if letter in syntax.digits:
                    while j < len(letters) and letters[j] in "0123456789abcdefABCDEFx":
                        j += 1
            i += 2 if skip_next else 1
            continue
        return "path", arg
    if i < len(args):
        return ("stdin", "") if args[i] == "-" else ("path", args[i])
    return "", ""


def java_argument(args: list[str]) -> tuple[str, str]:
    """(form, value) for a java command line: the jar, module or source file it runs, or its main class."""
    i = 1
    while i < len(args):
        arg = args[i]
        following = args[i + 1] if i + 1 < len(args) else ""
        if arg == "-jar":
            return "path", following
        if arg in ("-m", "--module"):
            return "module", following
        if arg.startswith("--module="):
            return "module", arg.partition("=")[2]
        if arg in _JAVA_VALUE_OPTIONS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        if arg.endswith(".java") or "/" in arg:
            return "path", arg
        return "class", arg
    return "", ""


# ---- reading a process ----------------------------------------------------------------------------


_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd)/(\d+)")
_STD_STREAMS = {"/dev/stdin": "0", "/dev/stdout": "1", "/dev/stderr": "2"}

FileSignature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


class IdentityReader:
    """Reads process identities under ``proc_root``, hashing each file once (bounded LRU caches)."""

    def __init__(
        self,
        proc_root: str = "/proc",
        cache_size: int = CACHE_SIZE,
        max_hash_bytes: int = MAX_HASH_BYTES,
        max_hash_seconds: float = MAX_HASH_SECONDS,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        privileged: Optional[PrivilegedReader] = None,
    ) -> None:
        """``privileged``: the privileged reader, asked about processes whose exe link this process may
        not read (another user's, when the component runs unprivileged)."""
        self.proc_root = proc_root
        self.privileged = privileged
        self.cache_size = cache_size
        self.max_hash_bytes = max_hash_bytes
        self.max_hash_seconds = max_hash_seconds
        self.recheck_seconds = recheck_seconds
        self._clock = clock
        self._hashes: OrderedDict[FileSignature, str] = OrderedDict()  # "" for too large / too slow
        self._identities: OrderedDict[tuple[object, ...], ExecutableIdentity] = OrderedDict()
        # (pid, exe link, command line of an interpreter) -> (monotonic time checked, identity)
        self._processes: OrderedDict[tuple[object, ...], tuple[float, ExecutableIdentity]] = OrderedDict()
        self._scripted: dict[str, bool] = {}  # exe path -> whether it runs scripts
        # (pid, start ticks, comm, command line) -> (monotonic time asked, identity): the privileged reader's
        self._privileged: OrderedDict[tuple[object, ...], tuple[float, ExecutableIdentity]] = OrderedDict()
        self._empty_cmdlines: set[tuple[int, str]] = set()  # (pid, exe link) read once without arguments
        self.files_hashed = 0  # files read in full so far: tests check the cache with it

    def read(
        self, pid: int, cmdline: Optional[list[str]] = None, process: Optional[ProcessInfo] = None
    ) -> Optional[ExecutableIdentity]:
        """The identity of process ``pid``; None when it has exited, runs no executable (a kernel thread
        or a zombie) or was executing another program while it was read (ask again later). ``cmdline``:
        its arguments, ``process``: what the process table read of it, when the caller has them already."""
        base = f"{self.proc_root}/{pid}"
        try:
            link = os.readlink(f"{base}/exe")
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                answered, found = self._read_privileged(pid, process)
                if answered or _exited(base):
                    return found  # None: gone, exiting, or executing another program (next time)
                return ExecutableIdentity(path="", sha256="", reason_unknowable=NO_ACCESS)
            return None
        if link.startswith("/memfd:"):
            return ExecutableIdentity(path=link, sha256="", reason_unknowable=MEMFD)
        if link.endswith(DELETED_SUFFIX):
            return ExecutableIdentity(path=link[: -len(DELETED_SUFFIX)], sha256="", reason_unknowable=DELETED)
        if not link.startswith("/"):
            return ExecutableIdentity(path=link, sha256="", reason_unknowable=NOT_A_FILE)
        scripted = self._scripted.get(link)
        if scripted is None:
            if len(self._scripted) >= self.cache_size:
                self._scripted.clear()
            scripted = self._scripted[link] = runs_scripts(link)
        if scripted and cmdline is None:
            cmdline = read_cmdline(f"{base}/cmdline")
        if scripted and not cmdline and self._first_empty_cmdline(pid, link):
            return None  # most likely just executed, its arguments not set up yet: judged next time
        process_key = (pid, link, tuple(cmdline) if scripted and cmdline else ())
        now = self._clock()
        seen = self._processes.get(process_key)
        if seen is not None and now - seen[0] < self.recheck_seconds:
            self._processes.move_to_end(process_key)
            return seen[1]
        identity = self._identify(base, link, cmdline if scripted else None)
        if identity is not None and _link(base) != link:
            # It executed another program while it was read: its command line or file may be the new
            # program's beside the old one's path (an identity neither has). Judged next time.
            return None
        if identity is not None and identity.reason_unknowable != UNREADABLE:
            self._processes[process_key] = (now, identity)
            self._processes.move_to_end(process_key)
            while len(self._processes) > self.cache_size:
                self._processes.popitem(last=False)
        return identity

    def _identify(self, base: str, link: str, cmdline: Optional[list[str]]) -> Optional[ExecutableIdentity]:
        """The identity of the process at ``base`` running ``link``: its files' signatures, and their
        hashes from the cache or read now."""
        exe_signature = _signature(f"{base}/exe")
        if exe_signature is None:
            if _exited(base):
                return None  # it exited while we read it
            return ExecutableIdentity(path=link, sha256="", reason_unknowable=UNREADABLE)

        script = script_sha = ""
        script_signature: Optional[FileSignature] = None
        if cmdline:
            script = self._script(base, link, cmdline)
            if script.startswith("/"):
                script_signature = _signature(self._script_file(base, script))
        cache_key = (link, exe_signature, script, script_signature)
        cached = self._identities.get(cache_key)
        if cached is not None:
            self._identities.move_to_end(cache_key)
            return cached

        sha, reason = self._hash(f"{base}/exe", exe_signature)
        if script_signature is not None:
            script_sha = self._hash(self._script_file(base, script), script_signature)[0]
        if reason == UNREADABLE and _exited(base):
            return None  # it exited while we read it
        identity = ExecutableIdentity(
            path=link, sha256=sha, script=script, script_sha256=script_sha, reason_unknowable=reason
        )
        if reason != UNREADABLE:  # a read error may pass (a stale NFS handle); look again next time
            self._identities[cache_key] = identity
            while len(self._identities) > self.cache_size:
                self._identities.popitem(last=False)
        return identity

    def read_file(self, path: str) -> ExecutableIdentity:
        """The identity a process running the file at ``path`` (no script) would have: the resolved
        path (as /proc/PID/exe shows it) and its SHA-256."""
        resolved = os.path.realpath(path)
        signature = _signature(resolved)
        if signature is None:
            return ExecutableIdentity(path=resolved, sha256="", reason_unknowable=UNREADABLE)
        sha, reason = self._hash(resolved, signature)
        return ExecutableIdentity(path=resolved, sha256=sha, reason_unknowable=reason)

    def _read_privileged(
        self, pid: int, process: Optional[ProcessInfo]
    ) -> tuple[bool, Optional[ExecutableIdentity]]:
        """(whether the privileged reader answered, the identity it gave): the identity is kept as long as
        the process is the same program (its start time, name and command line) and rechecked like the
        others. An answer without an identity says the process is gone or was executing another
        program; no answer (no reader, a timeout, a failure) leaves the caller to what it may read."""
        reader = self.privileged
        if reader is None or not reader.available:
            return False, None
        if process is None:
            try:
                stat = read_bounded(f"{self.proc_root}/{pid}/stat", STAT_BYTES).decode("utf-8", "replace")
                comm, _, _, start = parse_stat(stat)
            except (OSError, ValueError, IndexError):
                return False, None
            key: tuple[object, ...] = (
                pid,
                start,
                comm,
                tuple(read_cmdline(f"{self.proc_root}/{pid}/cmdline")),
            )
        else:
            start = process.start_ticks
            key = (pid, start, process.comm, process.cmdline)
        now = self._clock()
        seen = self._privileged.get(key)
        if seen is not None and now - seen[0] < self.recheck_seconds:
            self._privileged.move_to_end(key)
            return True, seen[1]
        answer = reader.ask("identity", pid, start)
        if answer is None:
            return reader.last_error in (GONE, NO_PROGRAM), None
        identity = _identity_of(answer)
        if identity is not None:
            self._privileged[key] = (now, identity)
            self._privileged.move_to_end(key)
            while len(self._privileged) > self.cache_size:
                self._privileged.popitem(last=False)
        return identity is not None, identity

    def _first_empty_cmdline(self, pid: int, link: str) -> bool:
        """Whether this is the first time the interpreter process ``pid`` running ``link`` is read with an
        empty command line. Right after an exec the kernel has switched the executable before it set up
        the new arguments; a process that cleared its own arguments is judged from the second read on."""
        key = (pid, link)
        if key in self._empty_cmdlines:
            return False
        if len(self._empty_cmdlines) >= self.cache_size:
            self._empty_cmdlines.clear()
        self._empty_cmdlines.add(key)
        return True

    def digest(self, path: str) -> tuple[str, str]:
        """(sha256, reason_unknowable) of the regular file at ``path`` (followed if a link), hashed once
        per file version like every other file of this reader."""
        signature = _signature(path)
        if signature is None:
            return "", UNREADABLE
        return self._hash(path, signature)

    def _script(self, base: str, exe_path: str, cmdline: list[str]) -> str:
        if os.path.basename(exe_path) == "java":
            form, value = java_argument(cmdline)
        else:
            syntax = interpreter_syntax(exe_path, cmdline[0])
            if syntax is None:
                return ""
            form, value = script_argument(cmdline, syntax)
        if form == "inline":
            return INLINE
        if form == "stdin":
            return STDIN
        if form == "module":
            return MODULE_PREFIX + value
        if form == "class":
            return CLASS_PREFIX + value
        if form == "path" and value:
            if value.startswith("/"):
                return os.path.normpath(value)
            try:
                cwd = os.readlink(f"{base}/cwd")
            except OSError:
                return value  # relative, and where it is relative to is unknown: no hash
            return os.path.normpath(os.path.join(cwd, value))
        return ""

    def _script_file(self, base: str, script: str) -> str:
        """Where to read a script path of the process: its own fds for /dev/fd/N, else inside its root."""
        fd = _STD_STREAMS.get(script)
        match = _FD_PATH.fullmatch(script)
        if match:
            fd = match.group(1)
        if fd is not None:
            return f"{base}/fd/{fd}"
        return f"{base}/root{script}"

    def _hash(self, path: str, signature: FileSignature) -> tuple[str, str]:
        """(sha256, reason_unknowable) of a regular file, from the cache when its signature is known."""
        cached = self._hashes.get(signature)
        if cached is not None:
            self._hashes.move_to_end(signature)
            return cached, "" if cached else TOO_LARGE
        if signature[2] > self.max_hash_bytes:
            result = ""
        else:
            try:
                digest = self._read_digest(path)
            except OSError:
                return "", UNREADABLE
            if digest is None:
                result = ""
            else:
                result = digest
                self.files_hashed += 1
        self._hashes[signature] = result
        while len(self._hashes) > self.cache_size:
            self._hashes.popitem(last=False)
        return result, "" if result else TOO_LARGE

    def _read_digest(self, path: str) -> Optional[str]:
        """SHA-256 of a file read in chunks; None when it grows past the bound or reads too slowly."""
        deadline = time.monotonic() + self.max_hash_seconds
        digest = hashlib.sha256()
        size = 0
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            while True:
                chunk = os.read(fd, HASH_CHUNK)
                if not chunk:
                    return digest.hexdigest()
                size += len(chunk)
                if size > self.max_hash_bytes or time.monotonic() > deadline:
                    return None
                digest.update(chunk)
        finally:
            os.close(fd)


def _identity_of(answer: dict[str, object]) -> Optional[ExecutableIdentity]:
    """The identity in a privileged reader's answer; None when the answer is not one."""
    fields = [answer.get(name) for name in ("path", "sha256", "script", "script_sha256", "reason")]
    if not all(isinstance(value, str) and len(value) <= 8192 for value in fields):
        return None
    path, sha, script, script_sha, reason = (str(value) for value in fields)
    return ExecutableIdentity(
        path=path, sha256=sha, script=script, script_sha256=script_sha, reason_unknowable=reason
    )


def _exited(base: str) -> bool:
    """Whether the process at ``base`` (/proc/PID) is gone or exiting (a fork storm's dying processes
    would otherwise be unreadable executables)."""
    try:
        text = read_bounded(f"{base}/stat", STAT_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return not os.path.isdir(base)
    except OSError:
        return False
    return exiting(text)


def _link(base: str) -> Optional[str]:
    """The exe link of the process at ``base``; None when it cannot be read (any more)."""
    try:
        return os.readlink(f"{base}/exe")
    except OSError:
        return None


def _signature(path: str) -> Optional[FileSignature]:
    """(st_dev, st_ino, st_size, st_mtime_ns) of a regular file; None when it is not one or unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

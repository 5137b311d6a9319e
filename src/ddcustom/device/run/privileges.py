"""Starting as root, running unprivileged: the privileged reader forked off, then the privileges dropped.

The recipe's Startup step starts ``ddcustom run`` as root (``RequiresPrivilege``) so that the component can
see what root sees without being root. Before anything else (no thread, no configuration read, no IPC),
``start`` makes a socket pair, forks the privileged reader, which keeps root and one end and answers
only the questions of ``sources/privileged/protocol.py``, and then drops this process to the component's
user for good: detection, alerts and IPC run unprivileged. Nothing can connect to the reader: the socket
pair has no path, and only this process holds the other end.

Who the component's user is: under Greengrass the owner of its work folder (the nucleus makes it the
``runWith`` user's, default ``ggc_user``), locally the ``--user`` of ``ddcustom run``. Started by root
with no such user (the work folder is root's, as in a containerized core running components as root),
the component stays root and reads /proc itself. Started unprivileged, it has no reader: other users'
processes are identified by what anyone may read (docs/threat-model.md).
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import sys
from dataclasses import dataclass
from typing import Optional

from ddcustom.device.sources.privileged.client import PrivilegedReader
from ddcustom.device.sources.privileged.server import serve

log = logging.getLogger(__name__)

# How this process sees other users' processes (logged at start, shown by `ddcustom check`).
PRIVILEGED_READER = "privileged reader"
ROOT = "root"
UNPRIVILEGED = "unprivileged"
MODES = {
    PRIVILEGED_READER: "unprivileged, with the privileged reader: other users' processes are seen as root "
    "sees them",
    ROOT: "running as root: every process is read directly",
    UNPRIVILEGED: "unprivileged, without the privileged reader: other users' processes are known only by "
    "what anyone may read (user, name, argv[0], code sizes)",
}


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str

    @classmethod
    def of_uid(cls, uid: int, gid: int) -> Account:
        try:
            name = pwd.getpwuid(uid).pw_name
            groups = tuple(os.getgrouplist(name, gid))
        except KeyError:  # a uid without a passwd entry: its own group only
            name, groups = str(uid), (gid,)
        return cls(uid, gid, groups, name)

    @classmethod
    def named(cls, user: str) -> Account:
        """The account of ``user`` (a name or a number); ValueError when there is none."""
        try:
            entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            if user.isdigit():
                return cls(int(user), int(user), (int(user),), user)
            raise ValueError(f"no user {user!r} on this device") from None
        return cls.of_uid(entry.pw_uid, entry.pw_gid)


@dataclass
class Started:
    mode: str
    reader: Optional[PrivilegedReader] = None
    reader_pid: int = 0


def component_account(user: Optional[str], under_greengrass: bool) -> Optional[Account]:
    """Whom the component runs as once started by root: ``user``, else under Greengrass the owner of the
    work folder (the current directory); None to stay as it is."""
    if user:
        return Account.named(user)
    if under_greengrass:
        folder = os.stat(os.getcwd())
        if folder.st_uid != 0:
            return Account.of_uid(folder.st_uid, folder.st_gid)
    return None


def start(account: Optional[Account], with_reader: bool = True) -> Started:
    """Fork the privileged reader (when ``with_reader``) and become ``account``; call before any thread
    starts. Not root, or no account to become: nothing changes."""
    if os.geteuid() != 0:
        return Started(UNPRIVILEGED)
    if account is None or account.uid == 0:
        return Started(ROOT)
    reader: Optional[PrivilegedReader] = None
    reader_pid = 0
    if with_reader:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        reader_pid = os.fork()
        if reader_pid == 0:  # the privileged reader: root, its end of the pair, nothing else
            ours.close()
            _serve(theirs)
        theirs.close()
        reader = PrivilegedReader(ours)
    drop_to(account)
    return Started(PRIVILEGED_READER if reader is not None else UNPRIVILEGED, reader, reader_pid)


def drop_to(account: Account) -> None:
    """Become ``account`` for good (groups, then group, then user); RuntimeError if root could come back."""
    os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError(f"still able to become root after dropping to {account.name}")


def _serve(connection: socket.socket) -> None:
    """The reader's process: serve, then end without running anything of the parent's (no atexit)."""
    status = 0
    try:
        serve(connection)
    except BaseException:
        log.exception("privileged reader failed")
        status = 1
    finally:
        sys.stdout.flush()
        os._exit(status)

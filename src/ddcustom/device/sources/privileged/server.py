"""The privileged reader's side: answers the component's questions about processes, as root.

It runs in a process of its own, forked by root before the component drops its privileges (see
``ddcustom.device.run.privileges``), and serves one socket, its end of a socket pair whose other end only
the component holds: there is no path anyone could connect to. It reads only what protocol.py lists,
answers digests and names (never a file's content or descriptor), checks that the pid is still the
process the component saw (its start time) before and after reading, bounds every answer, and answers a
request it does not understand with an error instead of failing. It ends when the component's end of
the socket closes.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Optional

from ddcustom.device.fileio import read_bounded
from ddcustom.device.sources.identity import IdentityReader
from ddcustom.device.sources.mapped_code import MappedCodeReader
from ddcustom.device.sources.privileged.protocol import (
    GONE,
    MAX_REQUEST_BYTES,
    MAX_SOCKETS,
    NO_PROGRAM,
    BadRequest,
    encode_answer,
    parse_request,
)
from ddcustom.device.sources.process_details import ProcessDetails
from ddcustom.device.sources.procfs import STAT_BYTES, parse_stat

log = logging.getLogger(__name__)


class Answers:
    """The answers, from ``proc_root`` (tests give a fixture tree; the real reader reads /proc)."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._identities = IdentityReader(proc_root)
        self._details = ProcessDetails(proc_root)
        self._mapped = MappedCodeReader(self._identities, through_map_files=True)

    def answer(self, data: bytes) -> bytes:
        """The answer datagram to one request datagram; never raises."""
        request_id: Optional[int] = None
        try:
            request_id, op, pid, start = parse_request(data)
            if self._start_of(pid) != start:
                return encode_answer(request_id, {"error": GONE})
            answer = getattr(self, f"_{op}")(pid)
            if self._start_of(pid) != start:  # the pid was reused while it was read
                return encode_answer(request_id, {"error": GONE})
            return encode_answer(request_id, answer)
        except BadRequest as exc:
            return encode_answer(request_id, {"error": f"bad request: {exc}"})
        except Exception as exc:  # one bad answer must not end the reader
            log.warning("privileged reader: %s: %s", type(exc).__name__, exc)
            return encode_answer(request_id, {"error": f"failed: {type(exc).__name__}"})

    def _start_of(self, pid: int) -> Optional[int]:
        try:
            return parse_stat(
                read_bounded(f"{self.proc_root}/{pid}/stat", STAT_BYTES).decode("utf-8", "replace")
            )[3]
        except (OSError, ValueError, IndexError):
            return None

    def _identity(self, pid: int) -> dict[str, Any]:
        identity = self._identities.read(pid)
        if identity is None:  # gone (answer() says so) or executing another program while it was read
            return {"error": NO_PROGRAM}
        return {
            "path": identity.path,
            "sha256": identity.sha256,
            "script": identity.script,
            "script_sha256": identity.script_sha256,
            "reason": identity.reason_unknowable,
        }

    def _maps(self, pid: int) -> dict[str, Any]:
        """The files mapped executable, each once (path and SHA-256, read through map_files so that a
        deleted or replaced file is hashed as mapped), and the executable regions no file backs."""
        code = self._mapped.read(pid)
        if code is None:
            return {"error": GONE}
        files = [{"path": f.path, "sha256": f.sha256, "reason": f.reason} for f in code.files]
        return {"files": files, "anonymous_executable": code.anonymous_executable}

    def _sockets(self, pid: int) -> dict[str, Any]:
        return {"inodes": sorted(self._details.socket_inodes(pid))[:MAX_SOCKETS]}

    def _preload(self, pid: int) -> dict[str, Any]:
        return {"variables": self._details.loader_variables(pid)}  # as root: read directly


def serve(connection: socket.socket, answers: Optional[Answers] = None) -> None:
    """Answer requests on ``connection`` until the component's end closes."""
    answers = answers or Answers()
    while True:
        try:
            data = connection.recv(MAX_REQUEST_BYTES + 1)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return  # the component is gone
        try:
            connection.send(answers.answer(data))
        except OSError:
            return

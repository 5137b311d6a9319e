"""The component's side of the privileged reader: ask a question about a process, wait a bounded time.

One question at a time on the component's end of the socket pair; each request carries an id, and an
answer to an older request (one that timed out) is read and dropped. When the reader does not answer
within the timeout, or has gone away, the question gets no answer (None) and the caller falls back to
what it may read itself; a reader that has gone away is not asked again, and that is logged once.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any, Optional

from ddcustom.device.fileio import read_bounded
from ddcustom.device.sources.privileged.protocol import MAX_ANSWER_BYTES, MAX_ID, encode_request
from ddcustom.device.sources.procfs import STAT_BYTES, parse_stat

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0  # a hash of a large executable on slow storage; most answers take well under 1 ms


class PrivilegedReader:
    def __init__(
        self, connection: socket.socket, proc_root: str = "/proc", timeout: float = TIMEOUT_SECONDS
    ) -> None:
        self._connection = connection
        self._proc_root = proc_root
        self._timeout = timeout
        self._next_id = 0
        self.available = True  # False once the reader has gone away
        self.asked = 0  # questions sent: tests and the benchmark count round trips with it
        self.last_error = ""  # why the last question got no answer: the reader's error, "" for none

    def ask(self, op: str, pid: int, start: Optional[int] = None) -> Optional[dict[str, Any]]:
        """The answer to ``op`` about process ``pid`` (``start``: its start in clock ticks, read here
        when not given); None when there is none: the process is gone, the reader failed or is away.
        ``last_error`` says then what the reader answered (protocol.py's errors), "" when it did not."""
        self.last_error = ""
        if not self.available:
            return None
        if start is None:
            start = self._start_of(pid)
            if start is None:
                return None
        request_id = self._next_id
        self._next_id = (self._next_id + 1) % (MAX_ID + 1)
        deadline = time.monotonic() + self._timeout
        try:
            self._connection.settimeout(self._timeout)
            self._connection.send(encode_request(request_id, op, pid, start))
            while True:
                self._connection.settimeout(max(0.001, deadline - time.monotonic()))
                data = self._connection.recv(MAX_ANSWER_BYTES + 1)
                if not data:
                    raise ConnectionResetError("the privileged reader closed its end")
                answer = json.loads(data)
                if isinstance(answer, dict) and answer.get("id") == request_id:
                    break
        except socket.timeout:
            log.warning("privileged reader: no answer about pid %d within %g s", pid, self._timeout)
            return None
        except (OSError, ValueError) as exc:
            self._gone(exc)
            return None
        finally:
            self.asked += 1
        if "error" in answer:
            self.last_error = str(answer["error"])
            return None
        return answer

    def close(self) -> None:
        self.available = False
        self._connection.close()

    def _gone(self, exc: Exception) -> None:
        self.available = False
        log.error(
            "the privileged reader is gone (%s: %s): other users' processes are identified only by what "
            "anyone may read from now on",
            type(exc).__name__,
            exc,
        )

    def _start_of(self, pid: int) -> Optional[int]:
        try:
            raw = read_bounded(f"{self._proc_root}/{pid}/stat", STAT_BYTES)
            return parse_stat(raw.decode("utf-8", "replace"))[3]
        except (OSError, ValueError, IndexError):
            return None

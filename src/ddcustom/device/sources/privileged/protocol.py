"""What the component may ask the privileged reader, and how: a fixed set of questions about one process.

The component runs as an unprivileged user, which may not read another user's ``/proc/PID/exe``,
``maps``, ``fd/`` or ``environ``. The privileged reader (server.py), started by root before the
component drops its privileges, answers exactly four questions about a process, and nothing else:

- ``identity``: what it runs (executable path and SHA-256, an interpreter's script and its SHA-256);
- ``maps``: the files it maps executable (path and SHA-256), and how many executable regions no file backs;
- ``sockets``: the inodes of the sockets it holds;
- ``preload``: the values of the dynamic loader's variables in its environment (``LD_PRELOAD``,
  ``LD_LIBRARY_PATH``, ``LD_AUDIT``), and no other variable.

Answers carry digests and names, never a file's content nor a descriptor, so whoever holds the
component's end of the socket learns no more than the baseline keeps. A request names the process by
pid and start time (in clock ticks after boot, field 22 of ``/proc/PID/stat``): a pid reused by another
process since the component saw it is answered ``gone``, never with the other process's facts; a
process that executed another program while its identity was read is answered ``no program`` (the
component asks again next cycle, rather than take what it may read itself for the answer).

Wire form: one JSON object per datagram of a SOCK_SEQPACKET socket pair (message boundaries kept).
A request is ``{"id": N, "op": "identity", "pid": P, "start": S}`` and at most MAX_REQUEST_BYTES; an
answer is ``{"id": N, ...}`` with the op's fields, or ``{"id": N, "error": "..."}``, at most
MAX_ANSWER_BYTES.
"""

from __future__ import annotations

import json
from typing import Any, Optional

OPS = ("identity", "maps", "sockets", "preload")
MAX_REQUEST_BYTES = 256
MAX_ANSWER_BYTES = 64 * 1024
MAX_PID = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
MAX_ID = 2**31 - 1
MAX_START = 2**63 - 1
MAX_MAPPINGS = 256  # executable files of one process described
MAX_SOCKETS = 4096
MAX_VALUE_CHARS = 1024  # of one loader variable
LOADER_VARIABLES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT")
GONE = "gone"  # the process exited, or its pid is another process's now
# identity: the process runs no program that could be read now: it was executing another one while it
# was read (ask again next cycle), or it is a kernel thread
NO_PROGRAM = "no program"


class BadRequest(ValueError):
    """A request that is not one of the questions; the message says what is wrong."""


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_request(data: bytes) -> tuple[int, str, int, int]:
    """(id, op, pid, start) of a request datagram; BadRequest for anything else."""
    if len(data) > MAX_REQUEST_BYTES:
        raise BadRequest(f"longer than {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("not a JSON object in ASCII") from None
    if not isinstance(request, dict) or set(request) != {"id", "op", "pid", "start"}:
        raise BadRequest("expected exactly the keys id, op, pid, start")
    if not _integer(request["id"], 0, MAX_ID):
        raise BadRequest(f"id is not a number from 0 to {MAX_ID}")
    if request["op"] not in OPS:
        raise BadRequest(f"op is not one of {', '.join(OPS)}")
    if not _integer(request["pid"], 1, MAX_PID):
        raise BadRequest(f"pid is not a number from 1 to {MAX_PID}")
    if not _integer(request["start"], 0, MAX_START):
        raise BadRequest("start is not a number of clock ticks")
    return request["id"], request["op"], request["pid"], request["start"]


def encode_request(request_id: int, op: str, pid: int, start: int) -> bytes:
    return json.dumps({"id": request_id, "op": op, "pid": pid, "start": start}).encode("ascii")


def encode_answer(request_id: Optional[int], answer: dict[str, Any]) -> bytes:
    """The answer datagram, cut to MAX_ANSWER_BYTES by dropping list entries (marked ``truncated``)."""
    message = {"id": request_id, **answer}
    data = json.dumps(message, separators=(",", ":")).encode("ascii")
    lists = [key for key, value in message.items() if isinstance(value, list)]
    while len(data) > MAX_ANSWER_BYTES and lists:
        longest = max(lists, key=lambda key: len(message[key]))
        if not message[longest]:
            break
        message[longest] = message[longest][: len(message[longest]) // 2]
        message["truncated"] = True
        data = json.dumps(message, separators=(",", ":")).encode("ascii")
    if len(data) > MAX_ANSWER_BYTES:
        data = json.dumps({"id": request_id, "error": "answer too large"}).encode("ascii")
    return data

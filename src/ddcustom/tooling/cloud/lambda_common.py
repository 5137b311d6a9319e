"""What the stack's Lambda handlers share: error codes, times and durations in words, and the alert
message they publish to the alert SNS topic. Standard library only: every handler package carries it
(lambda_steps.COMMON_FILES).

An alert message is made for the e-mail subscriber first: a subject, sentences, ``name: value`` lines,
the commands that answer it, and last, after a line ``--``, the same facts as one JSON object (with
``"source": "cloud"`` and its ``kind``) for programs subscribed to the topic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

SUBJECT_MAX = 100  # SNS's limit on a subject
MESSAGE_MAX = 200_000  # under SNS's 256 KB message limit, with room for the JSON
CLOUD_SOURCE = "cloud"


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def utc(epoch: float) -> str:
    """``2026-12-06 09:30:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def iso(epoch: float) -> str:
    """``2026-12-06T09:30:00Z`` (fits a thing attribute value)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def from_iso(text: str) -> int:
    """The epoch seconds of ``iso``'s text; ValueError for anything else."""
    import calendar

    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def duration(seconds: float) -> str:
    """``3 h 20 min``, ``2 d 4 h``, ``45 min``, ``30 s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def message(
    sentences: Sequence[str], facts: Sequence[tuple[str, str]], commands: Sequence[str], data: dict[str, Any]
) -> str:
    """The body of an alert: sentences, aligned ``name: value`` lines, what to run, then ``--`` and the
    JSON object."""
    width = max((len(name) for name, _ in facts), default=0) + 1
    lines = [*sentences, ""]
    lines += [f"{name + ':':{width}} {value}" for name, value in facts]
    if commands:
        lines += ["", "What to do:", *(f"  {command}" for command in commands)]
    text = "\n".join(lines)[:MESSAGE_MAX]
    body = {"source": CLOUD_SOURCE, **data}
    return f"{text}\n\n--\n{json.dumps(body, sort_keys=True)}\n"


def publish(sns: Any, topic_arn: str, subject: str, body: str) -> None:
    """One alert to the topic. The subject is cut to SNS's 100 characters and kept on one line."""
    subject = "".join(c if " " <= c <= "~" else "?" for c in " ".join(subject.split()))  # printable ASCII
    if len(subject) > SUBJECT_MAX:
        subject = subject[: SUBJECT_MAX - 3] + "..."
    sns.publish(TopicArn=topic_arn, Subject=subject, Message=body)

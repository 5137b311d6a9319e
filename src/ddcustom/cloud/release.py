"""``ddcustom cloud release THING``: takes a device out of quarantine and clears the record on it."""

from __future__ import annotations

from typing import TextIO

from botocore.exceptions import ClientError

from ddcustom.cloud.options import CloudOptions, OptionError
from ddcustom.cloud.quarantine import ATTRIBUTE
from ddcustom.cloud.steps import NOT_FOUND, Clients, error_code


def release(aws: Clients, opts: CloudOptions, thing: str, out: TextIO) -> int:
    """0 when the thing is out of the group and carries no record. OptionError for an unknown thing."""
    iot = aws("iot")
    group = opts.quarantine_group_name
    try:
        described = iot.describe_thing(thingName=thing)
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND:
            raise OptionError(f"no thing named {thing!r} in {opts.region}") from None
        raise
    record = described.get("attributes", {}).get(ATTRIBUTE)
    pages = iot.get_paginator("list_thing_groups_for_thing").paginate(thingName=thing)
    member = any(g.get("groupName") == group for page in pages for g in page.get("thingGroups", []))
    if member:
        iot.remove_thing_from_thing_group(thingGroupName=group, thingName=thing)
        print(f"removed  {thing} from {group}", file=out)
    else:
        print(f"kept     {thing}: not in {group}", file=out)
    if record is not None:
        # An empty value removes an attribute (merge keeps the others).
        iot.update_thing(thingName=thing, attributePayload={"attributes": {ATTRIBUTE: ""}, "merge": True})
        print(f"cleared  {ATTRIBUTE} on {thing} (was {record})", file=out)
    print(
        f"released {thing}; the next in-alarm alert of a quarantine behavior quarantines it again", file=out
    )
    return 0

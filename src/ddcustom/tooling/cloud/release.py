"""``ddcustom cloud release THING``: takes a device out of quarantine and clears the record on it."""

from __future__ import annotations

from typing import TextIO

from ddcustom.tooling.cloud.options import CloudOptions, OptionError
from ddcustom.tooling.cloud.quarantine import ATTRIBUTE, in_group
from ddcustom.tooling.cloud.steps import Clients, _or_none


def release(aws: Clients, opts: CloudOptions, thing: str, out: TextIO) -> int:
    """0 when the thing is out of the group and carries no record. OptionError for an unknown thing."""
    iot = aws("iot")
    group = opts.quarantine_group_name
    described = _or_none(lambda: iot.describe_thing(thingName=thing))
    if described is None:
        raise OptionError(f"no thing named {thing!r} in {opts.region}")
    record = described.get("attributes", {}).get(ATTRIBUTE)
    if in_group(iot, thing, group):
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

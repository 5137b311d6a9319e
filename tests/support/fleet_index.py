"""A stand-in for the fleet index's SearchIndex over moto's IoT registry: moto's own SearchIndex knows
neither named shadows nor paging. It answers the documented query syntax the code uses (terms joined by
AND, NOT, field:value, field:*, field<N, field>=N; https://docs.aws.amazon.com/iot/latest/developerguide/query-syntax.html)
from what the registry holds now (things, their attributes and groups) and from the shadows the test
sets, as the index would once it caught up."""

from __future__ import annotations

import json
import re
from typing import Any

TERM = re.compile(r"^(NOT )?([\w.:]+?)(:|<=|>=|<|>)(.+)$")


class FleetIndex:
    def __init__(self, iot: Any) -> None:
        self.iot = iot  # moto's registry
        self.shadows: dict[str, dict[str, Any]] = {}  # thing -> reported document of the shadow ddcustom
        self.queries: list[str] = []
        self.page_size = 500  # SearchIndex's largest page; smaller to make the code page

    def report(self, thing: str, **reported: Any) -> None:
        self.shadows.setdefault(thing, {}).update(reported)

    def _document(self, name: str) -> dict[str, Any]:
        thing = self.iot.describe_thing(thingName=name)
        groups = [g["groupName"] for g in self.iot.list_thing_groups_for_thing(thingName=name)["thingGroups"]]
        document: dict[str, Any] = {
            "thingName": name,
            "thingId": thing["thingId"],
            "thingGroupNames": groups,
            "attributes": dict(thing.get("attributes") or {}),
        }
        if name in self.shadows:
            document["shadow"] = json.dumps({"name": {"ddcustom": {"reported": self.shadows[name]}}})
        return document

    def _value(self, document: dict[str, Any], field: str) -> Any:
        if field == "thingGroupNames":
            return document["thingGroupNames"]
        if field.startswith("attributes."):
            return document["attributes"].get(field.split(".", 1)[1])
        if field.startswith("shadow.name.ddcustom.reported."):
            return self.shadows.get(document["thingName"], {}).get(field.rsplit(".", 1)[1])
        if field == "thingName":
            return document["thingName"]
        raise AssertionError(f"the stand-in index does not know the field {field}")

    def _matches(self, document: dict[str, Any], term: str) -> bool:
        match = TERM.match(term)
        assert match, f"the stand-in index cannot read the term {term!r}"
        negated, field, operator, wanted = match.groups()
        value = self._value(document, field)
        if operator == ":":
            if wanted == "*":
                result = value is not None
            else:
                text = json.loads(wanted) if wanted.startswith('"') else wanted
                values = value if isinstance(value, list) else [value]
                result = any(str(v).lower() == str(text).lower() for v in values)
        else:
            number = float(wanted)
            compare = {"<": number.__gt__, "<=": number.__ge__, ">": number.__lt__, ">=": number.__le__}
            result = isinstance(value, (int, float)) and compare[operator](value)
        return result != bool(negated)

    def search_index(self, **params: Any) -> dict[str, Any]:
        query = params["queryString"]
        self.queries.append(query)
        terms = query.split(" AND ")
        names = sorted(t["thingName"] for t in self.iot.list_things()["things"])
        found = [d for d in (self._document(n) for n in names) if all(self._matches(d, t) for t in terms)]
        start = int(params.get("nextToken") or 0)
        size = min(int(params.get("maxResults", 500)), self.page_size)
        page: dict[str, Any] = {"things": found[start : start + size]}
        if start + size < len(found):
            page["nextToken"] = str(start + size)
        return page

"""Fleet views as provisioning steps: fleet indexing of the named shadow ``ddcustom``, the fleet metrics
(devices in alarm, devices reporting) in CloudWatch, and the CloudWatch alarm on them.

Fleet indexing has one configuration per account and region, shared with whatever else uses it. Setup
merges into it (never lowers a mode, never drops a field or shadow name) and first records what it
added in an SSM parameter tagged with the stack; teardown takes away what that record lists and is
still there, and nothing else: a mode is turned back only while nothing else in the configuration
needs it, so that a change someone made in between stays.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Optional

from ddcustom.tooling.cloud.fleet_index import FLEET_SHADOW, INDEX, QUERY_VERSION, REPORTED, quoted
from ddcustom.tooling.cloud.options import CloudOptions
from ddcustom.tooling.cloud.steps import (
    Call,
    Clients,
    Conflict,
    OwnedStep,
    Status,
    Step,
    _has_tag,
    _not_ours,
    _or_none,
    _tag_list,
)

# Typed fields for the fleet metrics' aggregation and for queries on the shadow (docs/fleet.md).
CUSTOM_FIELDS = (
    {"name": REPORTED + "alarmCount", "type": "Number"},
    {"name": REPORTED + "inAlarm", "type": "Boolean"},
    {"name": REPORTED + "updated", "type": "Number"},
)
MODE_ORDER = ("OFF", "REGISTRY", "REGISTRY_AND_SHADOW")
MAX_SHADOW_NAMES = 10  # the default quota of named shadows in the indexing filter
METRIC_PERIOD = 300  # seconds between fleet metric emissions, as the devices' report interval
METRIC_NAMESPACE = "IoTFleetMetrics"  # where IoT puts fleet metrics in CloudWatch
EMPTY_CONFIGURATION: dict[str, Any] = {"thingIndexingMode": "OFF"}
MODE_KEYS = ("thingIndexingMode", "namedShadowIndexingMode")


# ---- fleet indexing ----


def additions(config: dict[str, Any]) -> dict[str, Any]:
    """What the stack needs added to a thingIndexingConfiguration (empty: nothing). Raises Conflict
    where it cannot be merged (a field of ours with another type, a full shadow name filter)."""
    added: dict[str, Any] = {}
    mode = config.get("thingIndexingMode", "OFF")
    if mode not in MODE_ORDER[1:]:
        added["thingIndexingMode"] = [mode, "REGISTRY"]
    shadow_mode = config.get("namedShadowIndexingMode", "OFF")
    if shadow_mode != "ON":
        added["namedShadowIndexingMode"] = [shadow_mode, "ON"]
    names = list(config.get("filter", {}).get("namedShadowNames", []))
    if FLEET_SHADOW not in names:
        if len(names) >= MAX_SHADOW_NAMES:
            raise Conflict(
                f"fleet indexing already indexes {len(names)} named shadows ({', '.join(names)}), the "
                f"default maximum: raise the quota or remove one, or use --fleet off"
            )
        added["namedShadowNames"] = [FLEET_SHADOW]
    types = {field["name"]: field["type"] for field in config.get("customFields", [])}
    for field in CUSTOM_FIELDS:
        if types.get(field["name"], field["type"]) != field["type"]:
            raise Conflict(
                f"fleet indexing has the custom field {field['name']} as {types[field['name']]}, not "
                f"{field['type']}: a field's type cannot change; remove it first, or use --fleet off"
            )
    fields = [dict(field) for field in CUSTOM_FIELDS if field["name"] not in types]
    if fields:
        added["customFields"] = fields
    return added


def merged(config: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``added`` in it; everything else as it was."""
    new = _sendable(config)
    if "thingIndexingMode" in added:
        new["thingIndexingMode"] = added["thingIndexingMode"][1]
    if "namedShadowIndexingMode" in added:
        new["namedShadowIndexingMode"] = added["namedShadowIndexingMode"][1]
    if "namedShadowNames" in added:
        indexing_filter = new.setdefault("filter", {})
        indexing_filter["namedShadowNames"] = [
            *indexing_filter.get("namedShadowNames", []),
            *added["namedShadowNames"],
        ]
    if "customFields" in added:
        new["customFields"] = [*new.get("customFields", []), *added["customFields"]]
    return new


def restored(config: dict[str, Any], record: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """``config`` without what ``record`` says setup added and is still there: (new configuration,
    what was taken away, what was kept and why)."""
    new = _sendable(config)
    done: list[str] = []
    kept: list[str] = []
    indexing_filter = new.get("filter", {})
    names = list(indexing_filter.get("namedShadowNames", []))
    for name in record.get("namedShadowNames", []):
        if name in names:
            names.remove(name)
            done.append(f"named shadow {name}")
    if names:
        indexing_filter["namedShadowNames"] = names
    else:
        indexing_filter.pop("namedShadowNames", None)
        if not indexing_filter:
            new.pop("filter", None)
    ours = {(f["name"], f["type"]) for f in record.get("customFields", [])}
    fields = new.get("customFields", [])
    removed = [f["name"] for f in fields if (f["name"], f["type"]) in ours]
    if removed:
        new["customFields"] = [f for f in fields if (f["name"], f["type"]) not in ours]
        done.append("custom fields " + ", ".join(removed))
    if "namedShadowIndexingMode" in record:
        before, ours_value = record["namedShadowIndexingMode"]
        if new.get("namedShadowIndexingMode", "OFF") == before:
            pass  # never set, or already set back
        elif new.get("namedShadowIndexingMode") != ours_value:
            kept.append(f"namedShadowIndexingMode {new.get('namedShadowIndexingMode')} (changed since setup)")
        elif names:
            kept.append(f"namedShadowIndexingMode ON (still indexes {', '.join(names)})")
        else:
            new["namedShadowIndexingMode"] = before
            done.append(f"namedShadowIndexingMode ON -> {before}")
    if "thingIndexingMode" in record:
        before, ours_value = record["thingIndexingMode"]
        users = _index_users(new)
        if new.get("thingIndexingMode") == before:
            pass  # never set, or already set back
        elif new.get("thingIndexingMode") != ours_value:
            kept.append(f"thingIndexingMode {new.get('thingIndexingMode')} (changed since setup)")
        elif users:
            kept.append(f"thingIndexingMode {ours_value} (still used by {', '.join(users)})")
        else:
            new["thingIndexingMode"] = before
            done.append(f"thingIndexingMode {ours_value} -> {before}")
    return new, done, kept


def _index_users(config: dict[str, Any]) -> list[str]:
    """What else in the configuration needs the thing index on."""
    users = [
        key
        for key in ("thingConnectivityIndexingMode", "deviceDefenderIndexingMode", "namedShadowIndexingMode")
        if config.get(key, "OFF") != "OFF"
    ]
    if config.get("customFields"):
        users.append("custom fields " + ", ".join(f["name"] for f in config["customFields"]))
    return users


def _sendable(config: dict[str, Any]) -> dict[str, Any]:
    """A copy UpdateIndexingConfiguration takes: managed fields are the service's own, not ours to send."""
    new = {key: copy.deepcopy(value) for key, value in config.items() if key != "managedFields"}
    new.setdefault("thingIndexingMode", "OFF")
    return new


def describe_additions(added: dict[str, Any]) -> str:
    parts = [f"{key} {added[key][0]} -> {added[key][1]}" for key in MODE_KEYS if key in added]
    if "namedShadowNames" in added:
        parts.append("named shadow " + ", ".join(added["namedShadowNames"]) + " added")
    if "customFields" in added:
        parts.append("custom fields " + ", ".join(f["name"] for f in added["customFields"]) + " added")
    return "; ".join(parts)


class IndexingStep(Step):
    """The account's fleet indexing configuration, with the stack's additions merged in."""

    def __init__(self, opts: CloudOptions) -> None:
        self.opts = opts
        self.base_label = f"fleet indexing of named shadow {FLEET_SHADOW}"
        self.label = self.base_label
        self.config: dict[str, Any] = dict(EMPTY_CONFIGURATION)
        self.added: dict[str, Any] = {}
        self.record: Optional[dict[str, Any]] = None  # what an earlier setup of this stack added

    def _configuration(self, aws: Clients) -> dict[str, Any]:
        found = aws("iot-fleet").get_indexing_configuration()
        return dict(found.get("thingIndexingConfiguration") or EMPTY_CONFIGURATION)

    def _record(self, aws: Clients) -> Optional[dict[str, Any]]:
        """The stack's record; Conflict where a parameter of that name is not this stack's."""
        ssm = aws("ssm")
        name = self.opts.indexing_record
        found = _or_none(
            lambda: ssm.get_parameter(Name=name)["Parameter"], also=frozenset({"ParameterNotFound"})
        )
        if found is None:
            return None
        tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)
        if not _has_tag(tags["TagList"], self.opts):
            raise _not_ours(f"SSM parameter {name}", self.opts)
        record: dict[str, Any] = json.loads(found["Value"])
        return record

    def check(self, aws: Clients) -> Status:
        self.record = self._record(aws)
        self.config = self._configuration(aws)
        self.added = additions(self.config)
        if self.added:
            self.label = f"{self.base_label} ({describe_additions(self.added)})"
            return Status.CHANGED
        return Status.OWNED if self.record is not None else Status.PRESENT

    def owned(self, aws: Clients) -> bool:
        self.record = self._record(aws)
        return self.record is not None

    def create(self) -> list[Call]:
        record = _union(self.record or {}, self.added)
        put: dict[str, Any] = {
            "Name": self.opts.indexing_record,
            "Value": json.dumps(record, sort_keys=True),
            "Type": "String",
            "Description": f"ddcustom stack {self.opts.stack}: what setup added to fleet indexing",
        }
        if self.record is None:
            put["Tags"] = _tag_list(self.opts.tags)
        else:
            put["Overwrite"] = True
        # The record first: a failed update then leaves a record of additions that are not there,
        # which teardown skips; the other order could leave additions nobody would take away.
        update = {"thingIndexingConfiguration": merged(self.config, self.added)}
        return [Call("ssm", "PutParameter", put), Call("iot-fleet", "UpdateIndexingConfiguration", update)]

    def planned(self) -> list[Call]:
        self.config = dict(EMPTY_CONFIGURATION)
        self.added = additions(self.config)
        self.label = f"{self.base_label} ({describe_additions(self.added)})"
        return self.create()

    def remove(self, aws: Clients) -> list[Call]:
        config = self._configuration(aws)
        new, done, kept = restored(config, self.record or {})
        summary = ("took away " + "; ".join(done)) if done else "nothing of ours left in it"
        if kept:
            summary += "; kept " + "; kept ".join(kept)
        self.label = f"{self.base_label} ({summary})"
        calls = [Call("iot-fleet", "UpdateIndexingConfiguration", {"thingIndexingConfiguration": new})]
        delete = Call("ssm", "DeleteParameter", {"Name": self.opts.indexing_record})
        return [*calls, delete] if done else [delete]


def _union(record: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """An earlier record and new additions: a mode keeps the value from before the first setup."""
    union = {key: value for key, value in record.items()}
    for key in MODE_KEYS:
        if key in added and key not in union:
            union[key] = added[key]
    names = [*union.get("namedShadowNames", [])]
    union_names = names + [n for n in added.get("namedShadowNames", []) if n not in names]
    if union_names:
        union["namedShadowNames"] = union_names
    fields = [*union.get("customFields", [])]
    fields += [f for f in added.get("customFields", []) if f not in fields]
    if fields:
        union["customFields"] = fields
    return union


# ---- fleet metrics and the alarm ----


class FleetMetricStep(OwnedStep):
    """A fleet metric: every METRIC_PERIOD seconds, the count of the stack's devices matching a query,
    to CloudWatch (namespace IoTFleetMetrics, dimension AggregationType=count)."""

    def __init__(self, opts: CloudOptions, name: str, query: str, description: str) -> None:
        self.opts, self.name = opts, name
        self.params: dict[str, Any] = {
            "metricName": name,
            "queryString": f"thingGroupNames:{quoted(opts.thing_group)} AND {query}",
            "aggregationType": {"name": "Statistics", "values": ["count"]},
            "period": METRIC_PERIOD,
            "aggregationField": REPORTED + "alarmCount",
            "description": description,
            "queryVersion": QUERY_VERSION,
            "indexName": INDEX,
            "unit": "Count",
        }
        self.label = f"fleet metric {name}"
        self.update = False  # set by check(): ours, with another query (another --thing-group)

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(lambda: aws("iot-fleet").describe_fleet_metric(metricName=self.name))

    def _ours(self, aws: Clients, found: Any) -> bool:
        tags = aws("iot-fleet").list_tags_for_resource(resourceArn=found["metricArn"]).get("tags")
        return _has_tag(tags, self.opts)

    def _compare(self, aws: Clients, found: Any) -> Status:
        keys = ("queryString", "aggregationType", "period", "aggregationField", "indexName")
        self.update = any(found.get(key) != self.params[key] for key in keys)
        return Status.CHANGED if self.update else Status.OWNED

    def create(self) -> list[Call]:
        if self.update:
            return [Call("iot-fleet", "UpdateFleetMetric", dict(self.params))]
        return [Call("iot-fleet", "CreateFleetMetric", {**self.params, "tags": _tag_list(self.opts.tags)})]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("iot-fleet", "DeleteFleetMetric", {"metricName": self.name})]


def _fleet_metric(name: str, period: int = METRIC_PERIOD) -> dict[str, Any]:
    return {
        "Metric": {
            "Namespace": METRIC_NAMESPACE,
            "MetricName": name,
            "Dimensions": [{"Name": "AggregationType", "Value": "count"}],
        },
        "Period": period,
        "Stat": "Maximum",
    }


class FleetAlarmStep(OwnedStep):
    """A CloudWatch alarm to the stack's SNS topic while more than --fleet-alarm-threshold devices (or
    that share of the reporting devices) are in alarm; and an OK message when it is over."""

    def __init__(self, opts: CloudOptions, topic_arn: str) -> None:
        self.opts = opts
        threshold, percent = opts.fleet_threshold()
        what = f"{threshold:g}% of the reporting devices" if percent else f"{threshold:g} devices"
        self.params: dict[str, Any] = {
            "AlarmName": opts.fleet_alarm,
            "AlarmDescription": f"ddcustom stack {opts.stack}: more than {what} of {opts.thing_group} "
            "in alarm at once (`ddcustom cloud status` lists them)",
            "ActionsEnabled": True,
            "AlarmActions": [topic_arn],
            "OKActions": [topic_arn],
            "EvaluationPeriods": 1,
            "Threshold": threshold,
            "ComparisonOperator": "GreaterThanThreshold",
            # No data: nobody reports (or no device in alarm was ever counted); not a fleet in alarm.
            "TreatMissingData": "notBreaching",
        }
        if percent:
            self.params["Metrics"] = [
                {
                    "Id": "alarmed",
                    "MetricStat": _fleet_metric(opts.fleet_metric_in_alarm),
                    "ReturnData": False,
                },
                {
                    "Id": "reporting",
                    "MetricStat": _fleet_metric(opts.fleet_metric_reporting),
                    "ReturnData": False,
                },
                {
                    "Id": "share",
                    "Expression": "100 * alarmed / reporting",
                    "Label": "% in alarm",
                    "ReturnData": True,
                },
            ]
        else:
            metric = _fleet_metric(opts.fleet_metric_in_alarm)["Metric"]  # Namespace, MetricName, Dimensions
            self.params.update(metric, Statistic="Maximum", Period=METRIC_PERIOD)
        self.label = f"CloudWatch alarm {opts.fleet_alarm} (more than {what} in alarm)"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        alarms = aws("cloudwatch").describe_alarms(AlarmNames=[self.opts.fleet_alarm]).get("MetricAlarms", [])
        return dict(alarms[0]) if alarms else None

    def _ours(self, aws: Clients, found: Any) -> bool:
        tags = aws("cloudwatch").list_tags_for_resource(ResourceARN=found["AlarmArn"]).get("Tags")
        return _has_tag(tags, self.opts)

    def _compare(self, aws: Clients, found: Any) -> Status:
        same = all(found.get(key) == value for key, value in self.params.items() if key != "Metrics")
        if "Metrics" in self.params:
            same = same and _metrics_match(found.get("Metrics", []), self.params["Metrics"])
        return Status.OWNED if same else Status.CHANGED  # PutMetricAlarm replaces it

    def create(self) -> list[Call]:
        return [Call("cloudwatch", "PutMetricAlarm", {**self.params, "Tags": _tag_list(self.opts.tags)})]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("cloudwatch", "DeleteAlarms", {"AlarmNames": [self.opts.fleet_alarm]})]


def _metrics_match(found: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> bool:
    """DescribeAlarms may add keys to the metric queries (Period, Label...): compare ours only."""
    if len(found) != len(wanted):
        return False
    return all(all(f.get(key) == value for key, value in w.items()) for f, w in zip(found, wanted))

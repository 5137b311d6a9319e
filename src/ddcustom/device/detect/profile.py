"""Security profiles: Device Defender behavior JSON, loaded and validated for the device and the cloud.

One profile JSON serves both sides: the cloud side sends ``Profile.to_json()["behaviors"]`` to
CreateSecurityProfile unchanged, the engine evaluates the typed ``Behavior`` objects on the device.
Validation follows ValidateSecurityProfileBehaviors and reports every problem at once.

Behaviors with ``mlDetectionConfig`` (ML Detect) are kept for the cloud but not evaluated on the device:
the service learns their model from 14 days of fleet data, which the device does not have.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union, cast

from ddcustom.device.documents import (
    CONTROL_CHARACTERS,
    MAX_LISTED,
    load_json,
    plain_data_problem,
    shorten,
    shown,
)
from ddcustom.device.fileio import NotRegularFile, read_regular
from ddcustom.device.metrics import LIST_VALUE_KEYS, METRICS

log = logging.getLogger(__name__)

MAX_BEHAVIORS = 100
MAX_PROFILE_FILE_BYTES = 1_000_000
NAME_PATTERN = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
NUMERIC_OPERATORS = frozenset({"less-than", "less-than-equals", "greater-than", "greater-than-equals"})
SET_OPERATORS = frozenset({"in-set", "not-in-set"})
CIDR_OPERATORS = frozenset({"in-cidr-set", "not-in-cidr-set"})
PORT_OPERATORS = frozenset({"in-port-set", "not-in-port-set"})
VALUE_KINDS = ("count", "number", "numbers", "strings", "cidrs", "ports")
# value kinds each operator takes
OPERATOR_VALUE_KINDS: dict[str, frozenset[str]] = {
    **{op: frozenset({"count", "number"}) for op in NUMERIC_OPERATORS},
    **{op: frozenset({"numbers", "strings"}) for op in SET_OPERATORS},
    **{op: frozenset({"cidrs"}) for op in CIDR_OPERATORS},
    **{op: frozenset({"ports"}) for op in PORT_OPERATORS},
}
# operators each metric kind takes
KIND_OPERATORS = {
    "number": NUMERIC_OPERATORS,
    "number_list": SET_OPERATORS,
    "string_list": SET_OPERATORS,
    "ip_list": CIDR_OPERATORS,
    "ports": PORT_OPERATORS,
}
DURATIONS = frozenset({300, 600, 900, 1800, 3600})
# Device-side metrics with a time dimension: their datapoint may be a sum over durationSeconds.
TIME_DIMENSION_METRICS = frozenset(
    {"aws:all-bytes-in", "aws:all-bytes-out", "aws:all-packets-in", "aws:all-packets-out"}
)
# CloudFormation's AWS::IoT::SecurityProfile lists "Average" too; the device takes its own mean
STATISTICS = ("Average", "p0", "p0.1", "p0.01", "p1", "p10", "p50", "p90", "p99", "p99.9", "p99.99", "p100")
CONFIDENCE_LEVELS = ("LOW", "MEDIUM", "HIGH")
BEHAVIOR_KEYS = frozenset({"name", "metric", "criteria", "suppressAlerts", "exportMetric", "metricDimension"})
CRITERIA_KEYS = frozenset(
    {
        "comparisonOperator",
        "value",
        "durationSeconds",
        "consecutiveDatapointsToAlarm",
        "consecutiveDatapointsToClear",
        "statisticalThreshold",
        "mlDetectionConfig",
    }
)
PROFILE_KEYS = frozenset({"name", "description", "behaviors"})

IpNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
# criteria.value parsed: (kind, threshold, members, cidrs); kind None when invalid
Value = tuple[Optional[str], Optional[float], frozenset[Union[float, str]], tuple[IpNetwork, ...]]


class ProfileError(ValueError):
    """A security profile that cannot be used; the message lists every problem found."""


# value kinds each metric type takes: DD's standard number metrics count, custom ones take a number
def _metric_value_kinds(metric: str, kind: str) -> frozenset[str]:
    if kind == "number":
        return frozenset({"count"} if METRICS[metric].standard else {"number"})
    return frozenset({LIST_VALUE_KEYS[kind]})


@dataclass(frozen=True)
class Criteria:
    """What is normal for one behavior (evaluable on the device)."""

    comparison_operator: str
    value_kind: Optional[str]  # one of VALUE_KINDS; None when statistic is set
    threshold: Optional[float]  # value.count / value.number
    members: frozenset[Union[float, str]]  # value.numbers / strings / ports
    cidrs: tuple[IpNetwork, ...]  # value.cidrs
    consecutive_datapoints_to_alarm: int
    consecutive_datapoints_to_clear: int
    duration_seconds: Optional[int]
    statistic: Optional[str]  # statisticalThreshold.statistic, e.g. "p90" or "Average"


@dataclass(frozen=True)
class Behavior:
    name: str
    metric: str
    metric_type: str  # number, number_list, string_list, ip_list, ports
    criteria: Optional[Criteria]  # None: ML Detect behavior, evaluated by the cloud only
    suppress_alerts: bool
    json_text: str  # the behavior exactly as given (Device Defender form), for events and the cloud

    def to_json(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.json_text))


@dataclass(frozen=True)
class Profile:
    name: str
    behaviors: tuple[Behavior, ...]
    description: str = ""
    warnings: tuple[str, ...] = ()  # e.g. ML Detect behaviors the device skips

    @property
    def device_behaviors(self) -> tuple[Behavior, ...]:
        return tuple(b for b in self.behaviors if b.criteria is not None)

    def to_json(self) -> dict[str, Any]:
        """The profile in Device Defender form: ``behaviors`` go to CreateSecurityProfile unchanged."""
        data: dict[str, Any] = {"name": self.name, "behaviors": [b.to_json() for b in self.behaviors]}
        if self.description:
            data["description"] = self.description
        return data


def builtin_profiles() -> list[str]:
    folder = resources.files("ddcustom") / "profiles"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(value: Any, base_dir: Optional[Path] = None) -> Profile:
    """Load a profile: a built-in name, a JSON file path, JSON text, a profile object or a behavior list.

    A relative file path is taken from ``base_dir`` when given (else from the current directory).
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "[")):
            return parse_profile(_json(text, "profile JSON text"), default_name="custom")
        if text in builtin_profiles():
            data = (resources.files("ddcustom") / "profiles" / f"{text}.json").read_text(encoding="utf-8")
            return parse_profile(_json(data, f"built-in profile {text!r}"), default_name=text)
        if CONTROL_CHARACTERS.search(text):
            raise ProfileError(f"security profile path {shown(text)} contains control characters")
        path = Path(base_dir or "") / text
        return parse_profile(_read_file(path), default_name=path.stem)
    if isinstance(value, (dict, list)):
        problem = plain_data_problem(value)
        if problem:
            raise ProfileError(f"security profile is not usable: {problem}")
        return parse_profile(value, default_name="custom")
    raise ProfileError(
        f"security profile must be a built-in name ({', '.join(builtin_profiles())}), a file path, "
        f"a profile object or a list of behaviors, not {type(value).__name__}"
    )


def _json(text: str, what: str) -> Any:
    try:
        return load_json(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{what} is not valid JSON: {exc}") from None
    except ValueError as exc:  # out of the configuration input's bounds
        raise ProfileError(f"{what} is not usable: {exc}") from None


def _read_file(path: Path) -> Any:
    try:
        data, _ = read_regular(path, MAX_PROFILE_FILE_BYTES + 1)
    except NotRegularFile as exc:  # a FIFO would block the loop (and a deployment's validation)
        raise ProfileError(f"security profile {shown(str(path))} is {exc}, not a regular file") from None
    except OSError as exc:
        raise ProfileError(
            f"security profile {shown(str(path))} is neither a built-in profile "
            f"({', '.join(builtin_profiles())}) nor a readable file: {exc.strerror or exc}"
        ) from None
    what = f"security profile file {shown(str(path))}"
    if len(data) > MAX_PROFILE_FILE_BYTES:
        raise ProfileError(f"{what} is larger than {MAX_PROFILE_FILE_BYTES} bytes")
    return _json(data.decode("utf-8", errors="replace"), what)


def parse_profile(data: Any, default_name: str = "custom") -> Profile:
    """Validate a profile object or a bare behavior list; raise ProfileError listing all problems."""
    problems: list[str] = []
    description = ""
    if isinstance(data, list):
        name, raw_behaviors = default_name, data
    elif isinstance(data, dict):
        unknown = sorted(set(data) - PROFILE_KEYS)
        if unknown:
            problems.append(
                f"unknown profile key(s) {_join(unknown, repr)}; allowed: name, behaviors, description"
            )
        name = data.get("name", default_name)
        description = data.get("description", "")
        if not isinstance(description, str) or len(description) > 1000:
            problems.append("profile description must be a string of at most 1000 characters")
            description = ""
        if not isinstance(data.get("behaviors"), list):
            raise ProfileError(
                f"profile 'behaviors' must be a list of behaviors, not {shown(data.get('behaviors'))}"
            )
        raw_behaviors = data["behaviors"]
    else:
        raise ProfileError(f"a profile must be an object or a list of behaviors, not {type(data).__name__}")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.append(f"profile name {shown(name)} must be 1-128 characters of a-z A-Z 0-9 : _ -")
        name = default_name
    if not raw_behaviors:
        problems.append("a profile needs at least one behavior")
    if len(raw_behaviors) > MAX_BEHAVIORS:
        problems.append(
            f"{len(raw_behaviors)} behaviors; Device Defender allows at most {MAX_BEHAVIORS} per profile"
        )
    behaviors: list[Behavior] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_behaviors):
        label = f"behavior #{index + 1}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            label = f"behavior {shorten(repr(raw['name']))}"
            if raw["name"] in seen:
                problems.append(f"{label}: duplicate behavior name")
            seen.add(raw["name"])
        behavior = _behavior(raw, label, problems)
        if behavior is not None:
            behaviors.append(behavior)
    if problems:
        listed = [shorten(problem, 500) for problem in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            listed.append(f"and {len(problems) - MAX_LISTED} more problems")
        raise ProfileError(f"security profile {name!r} is not valid: " + "; ".join(listed))
    warnings = tuple(
        f"behavior {b.name!r}: mlDetectionConfig is evaluated by Device Defender in the cloud only; "
        "the device skips it"
        for b in behaviors
        if b.criteria is None
    )
    for warning in warnings:
        log.warning("%s", warning)
    return Profile(name=name, behaviors=tuple(behaviors), description=description, warnings=warnings)


def _behavior(raw: Any, label: str, problems: list[str]) -> Optional[Behavior]:
    """Validate one behavior; append problems (prefixed with ``label``) and return it when valid."""
    if not isinstance(raw, dict):
        problems.append(f"{label}: must be an object with name, metric and criteria")
        return None
    start = len(problems)

    def bad(message: str) -> None:
        problems.append(f"{label}: {message}")

    unknown = sorted(set(raw) - BEHAVIOR_KEYS)
    if unknown:
        bad(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(BEHAVIOR_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        bad(f"name {shown(name)} must be 1-128 characters of a-z A-Z 0-9 : _ -")
    for flag in ("suppressAlerts", "exportMetric"):
        if flag in raw and not isinstance(raw[flag], bool):
            bad(f"{flag} must be true or false, not {shown(raw[flag])}")
    if "metricDimension" in raw:
        bad("metricDimension applies to cloud-side metrics only and cannot be evaluated on the device")
    metric = raw.get("metric")
    kind = METRICS[metric].kind if isinstance(metric, str) and metric in METRICS else None
    if kind is None:
        known = ", ".join(METRICS)
        bad(f"unknown metric {shown(metric)}; known metrics: {known}")
    criteria_raw = raw.get("criteria")
    if not isinstance(criteria_raw, dict):
        bad("criteria must be an object (comparisonOperator and value or statisticalThreshold)")
        return None
    criteria = _criteria(criteria_raw, str(metric), kind, bad)
    if len(problems) > start or kind is None:
        return None
    return Behavior(
        name=str(name),
        metric=str(metric),
        metric_type=kind,
        criteria=criteria,
        suppress_alerts=bool(raw.get("suppressAlerts", False)),
        json_text=json.dumps(raw, sort_keys=True),
    )


def _criteria(raw: dict[str, Any], metric: str, kind: Optional[str], bad: Any) -> Optional[Criteria]:
    unknown = sorted(set(raw) - CRITERIA_KEYS)
    if unknown:
        bad(f"unknown criteria key(s) {_join(unknown, repr)}; allowed: {_join(CRITERIA_KEYS)}")
    if "mlDetectionConfig" in raw:
        _ml_detection(raw, metric, kind, bad)
        return None
    to_alarm = _consecutive(raw, "consecutiveDatapointsToAlarm", bad)
    to_clear = _consecutive(raw, "consecutiveDatapointsToClear", bad)
    duration = raw.get("durationSeconds")
    if duration is not None:
        if not _is_int(duration) or duration not in DURATIONS:
            bad(f"durationSeconds {shown(duration)} must be one of {_join(DURATIONS)}")
        elif metric not in TIME_DIMENSION_METRICS:
            bad(f"durationSeconds needs a metric with a time dimension: {_join(TIME_DIMENSION_METRICS)}")
    operator = raw.get("comparisonOperator")
    if operator not in OPERATOR_VALUE_KINDS:
        bad(f"comparisonOperator {shown(operator)} must be one of {_join(OPERATOR_VALUE_KINDS)}")
        operator = None
    elif kind is not None and operator not in KIND_OPERATORS[kind]:
        allowed = _join(KIND_OPERATORS[kind])
        bad(f"operator {operator} does not apply to {kind} metric {metric!r}; use {allowed}")
    statistic: Optional[str] = None
    has_value = "value" in raw
    if "statisticalThreshold" in raw:
        statistic = _statistic(raw["statisticalThreshold"], has_value, operator, kind, bad)
        if not has_value:
            if statistic is None:
                return None
            return Criteria(
                str(operator), None, None, frozenset(), (), to_alarm, to_clear, duration, statistic
            )
    elif not has_value:
        bad("criteria needs a value or a statisticalThreshold")
        return None
    value_kind, threshold, members, cidrs = _value(raw["value"], bad)
    if value_kind is None:
        return None
    if operator is not None and value_kind not in OPERATOR_VALUE_KINDS[operator]:
        bad(
            f"operator {operator} does not take value.{value_kind}; "
            f"use {_join((f'value.{k}' for k in OPERATOR_VALUE_KINDS[operator]), sep=' or ')}"
        )
    elif kind is not None and operator is not None and value_kind not in _metric_value_kinds(metric, kind):
        allowed = " or ".join(f"value.{k}" for k in sorted(_metric_value_kinds(metric, kind)))
        bad(f"metric {metric!r} takes {allowed}, not value.{value_kind}")
    return Criteria(str(operator), value_kind, threshold, members, cidrs, to_alarm, to_clear, duration, None)


def _ml_detection(raw: dict[str, Any], metric: str, kind: Optional[str], bad: Any) -> None:
    config = raw["mlDetectionConfig"]
    level = config.get("confidenceLevel") if isinstance(config, dict) else None
    if level not in CONFIDENCE_LEVELS:
        levels = ", ".join(CONFIDENCE_LEVELS)
        bad(f"mlDetectionConfig.confidenceLevel {shown(level)} must be one of {levels}")
    others = sorted(set(raw) - {"mlDetectionConfig"})
    if others:
        bad(f"mlDetectionConfig cannot be combined with {', '.join(others)}")
    if kind is not None and (not METRICS[metric].standard or kind != "number"):
        bad(f"ML Detect does not support metric {metric!r} (only Device Defender's built-in number metrics)")


def _statistic(
    raw: Any, has_value: bool, operator: Optional[str], kind: Optional[str], bad: Any
) -> Optional[str]:
    statistic = raw.get("statistic") if isinstance(raw, dict) else None
    ok = True
    if statistic not in STATISTICS:
        bad(f"statisticalThreshold.statistic {shown(statistic)} must be one of {', '.join(STATISTICS)}")
        ok = False
    if has_value:
        bad("statisticalThreshold and value cannot be used together")
        ok = False
    if kind is not None and kind != "number":
        bad(f"statisticalThreshold applies to number metrics only, not {kind}")
        ok = False
    if operator is not None and operator not in NUMERIC_OPERATORS:
        bad(f"statisticalThreshold needs a numeric operator, not {operator}")
        ok = False
    return str(statistic) if ok else None


def _consecutive(raw: dict[str, Any], key: str, bad: Any) -> int:
    value = raw.get(key, 1)
    if not _is_int(value) or not 1 <= value <= 10:
        bad(f"{key} {shown(value)} must be a whole number from 1 to 10")
        return 1
    return int(value)


def _join(items: Any, show: Any = str, sep: str = ", ") -> str:
    return sep.join(map(show, sorted(items)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _value(raw: Any, bad: Any) -> Value:
    """Parse criteria.value; each problem goes to ``bad``."""
    nothing: Value = (None, None, frozenset(), ())
    kinds = [k for k in VALUE_KINDS if isinstance(raw, dict) and k in raw]
    if not isinstance(raw, dict) or len(kinds) != 1 or len(raw) != 1:
        bad(f"value {shown(raw)} must hold exactly one of {', '.join(VALUE_KINDS)}")
        return nothing
    kind = kinds[0]
    item = raw[kind]
    if kind == "count":
        if not _is_int(item) or item < 0:
            bad(f"value.count {shown(item)} must be a whole number >= 0")
            return nothing
        return kind, float(item), frozenset(), ()
    if kind == "number":
        if not _is_number(item):
            bad(f"value.number {shown(item)} must be a finite number")
            return nothing
        return kind, float(item), frozenset(), ()
    if not isinstance(item, list):
        bad(f"value.{kind} must be a list, not {shown(item)}")
        return nothing
    if kind == "numbers" and all(_is_number(v) for v in item):
        return kind, None, frozenset(float(v) for v in item), ()
    if kind == "ports" and all(_is_int(v) and 0 <= v <= 65535 for v in item):
        return kind, None, frozenset(float(v) for v in item), ()
    if kind == "strings" and all(isinstance(v, str) for v in item):
        return kind, None, frozenset(item), ()
    if kind == "cidrs" and all(isinstance(v, str) for v in item):
        try:
            return kind, None, frozenset(), tuple(ipaddress.ip_network(v, strict=False) for v in item)
        except ValueError as exc:
            bad(f"value.cidrs: {exc}")
            return nothing
    expected = {
        "numbers": "numbers",
        "ports": "port numbers 0-65535",
        "strings": "strings",
        "cidrs": "CIDR strings",
    }
    bad(f"value.{kind} must be a list of {expected[kind]}, not {shown(item)}")
    return nothing

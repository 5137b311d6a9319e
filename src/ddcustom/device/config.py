"""Configuration: one schema for the recipe, merge configurations and local ``--config`` files.

Keys are PascalCase as Greengrass components use. ``parse_settings`` turns a mapping into a frozen
``Settings`` once; every problem is a ``ConfigError`` naming the key, the value and what is allowed.

Input is read within the bounds of documents.py, whether it comes from a file or from a deployment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import yaml

from ddcustom.device.alerts.stops import MARKER_NAME
from ddcustom.device.documents import (
    CONTROL_CHARACTERS,
    MAX_DOCUMENT_BYTES,
    MAX_LISTED,
    load_json,
    load_yaml,
    plain_data_problem,
    shorten,
    shown,
)
from ddcustom.device.fileio import NotRegularFile, read_regular

if TYPE_CHECKING:
    from ddcustom.device.detect.profile import Profile

# The inference meter's busy-outside file, next to its time file unless told otherwise.
BUSY_OUTSIDE_FILE_NAME = "gpu_busy_outside_fb"
# Device Defender throttles reports sent faster than this (docs/device-defender.md, quotas).
MIN_REPORT_INTERVAL = 300

# With every list at this size (IPv6 peers, long names) a report is about 85 KB: under IoT Core's 128 KB.
MAX_REPORT_LIST_SIZE = 300


# Pool ports from Falco's miner_ports, minus the ones ordinary services use (25, 8000, 8001, 8008,
# 8080, 8118, 8888, 8899): on a device those would flag every web proxy. Add them back if you like.
DEFAULT_MINING_POOL_PORTS = [
    3333, 3334, 3335, 3336, 3357, 4444, 5555, 5556, 5588, 5730, 6099, 6666, 7777, 7778,
    8333, 9332, 9999, 14433, 14444, 45560, 45700,
]  # fmt: skip

DEFAULT_MINER_PROCESS_NAMES = [
    "xmrig", "xmr-stak", "minerd", "minergate", "cpuminer", "ccminer", "ethminer", "cgminer",
    "bfgminer", "sgminer", "claymore", "nbminer", "t-rex", "gminer", "lolminer", "phoenixminer",
    "teamredminer", "nanominer", "bminer", "wildrig", "srbminer",
]  # fmt: skip

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR")

# Greengrass hands the component its whole configuration, including the recipe's access control.
IGNORED_KEYS = frozenset({"accessControl"})


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and why.

    ``problems`` holds each problem when several were found at once (the message joins them).
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def summary(self, limit: int) -> str:
        """The problems as ``ddcustom check`` lists them, in one line of about ``limit`` characters at most:
        one problem as it is, several counted and joined; those that do not fit are counted at the end."""
        problems = list(self.problems) or [str(self)]
        if len(problems) == 1:
            return shorten(problems[0], max(limit - 30, 1))
        text = f"{len(problems)} configuration problems: "
        for index, problem in enumerate(problems):
            rest = len(problems) - index
            more = f"; and {rest} more (`ddcustom check` lists them all)"
            item = problem if index == 0 else f"; {problem}"
            if len(text) + len(item) + (len(more) if rest > 1 else 0) > limit:
                if index == 0:  # the first problem is always named, cut short if need be
                    text += shorten(problem, max(limit - len(text) - len(more) - 30, 1))
                    more = f"; and {rest - 1} more (`ddcustom check` lists them all)"
                return text + more
            text += item
        return text


@dataclass(frozen=True)
class Settings:
    """The validated configuration, one field per key of SCHEMA (``parse_settings`` makes it). Frozen:
    a configuration change replaces it whole. Each stage reads only its part, declared as a Protocol
    where the stage lives (``SourceSettings``, ``BaselineSettings``, ...), which this class satisfies."""

    report_interval_seconds: int
    detect_interval_seconds: float
    enable_gpu_metrics: bool
    enable_device_defender_report: bool
    use_short_names: bool
    include_loopback: bool
    gpu_load_feedback_file: str
    inference_time_feedback_file: str
    gpu_busy_outside_feedback_file: str
    meter_stale_seconds: int
    watched_processes: tuple[str, ...]
    allowed_gpu_processes: tuple[str, ...]
    mining_pool_ports: frozenset[int]
    miner_process_names: tuple[str, ...]
    security_profile: Profile
    alert_topic: str
    local_alert_topic: str
    state_directory: str
    fleet_shadow: bool
    privileged_reader: bool
    baseline_learning_seconds: int
    baseline_forget_seconds: int
    approved_executables: tuple[str, ...]
    approved_endpoints: tuple[str, ...]
    approved_libraries: tuple[str, ...]
    approved_cpu_levels: tuple[tuple[str, float], ...]  # (program SHA-256 or path, % of one core)
    fleet_known_executables: tuple[str, ...]
    fleet_inventory: bool
    evidence_redact_patterns: tuple[str, ...]
    alert_spool_max_bytes: int
    max_report_list_size: int
    log_level: str

    def alert_topic_for(self, thing_name: str) -> str:
        return self.alert_topic.replace("{thingName}", thing_name)

    @property
    def alert_spool_dir(self) -> str:
        return os.path.join(resolve_state_directory(self.state_directory), "alerts")

    @property
    def alarm_state_file(self) -> str:
        """The alarms open now, so a restarted component ends them (clears or invalidates them)."""
        return os.path.join(resolve_state_directory(self.state_directory), "alarms.json")

    @property
    def baseline_file(self) -> str:
        """The learned baseline of the device (ddcustom.device.baseline)."""
        return os.path.join(resolve_state_directory(self.state_directory), "baseline.json")

    @property
    def inventory_state_file(self) -> str:
        """What the fleet inventory last sent (outputs/inventory.py)."""
        return os.path.join(resolve_state_directory(self.state_directory), "inventory.json")

    @property
    def report_id_file(self) -> str:
        """The last report_id sent, so a restarted component continues above it."""
        return os.path.join(resolve_state_directory(self.state_directory), "report_id")

    @property
    def run_marker_file(self) -> str:
        """Present while detection runs, removed at a clean stop: the next start tells an unclean stop."""
        return os.path.join(resolve_state_directory(self.state_directory), MARKER_NAME)


def resolve_state_directory(configured: str) -> str:
    """Where the alert spool and the last report_id live.

    Empty means automatic: under Greengrass (SVCUID set) the component's working directory, which the
    nucleus sets to {work:path}; elsewhere $XDG_STATE_HOME/ddcustom (~/.local/state/ddcustom).
    """
    if configured:
        return configured
    if os.environ.get("SVCUID"):
        return os.path.abspath("state")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ddcustom")


# ---- value parsers: each takes (key, raw value) and returns the typed value or raises ----------


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"configuration key {key!r}: {shown(value)} is not allowed; {allowed}")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise _fail(
        key,
        value,
        'expected true or false (JSON booleans, or the strings "true" and "false" spelled so; '
        "YAML's yes/no/on/off and True/False are not booleans here)",
    )


def _number(key: str, value: Any, low: float, high: float, integer: bool) -> float:
    kind = "a whole number" if integer else "a number"
    allowed = f"expected {kind} from {low:g} to {high:g}"
    if isinstance(value, bool):
        raise _fail(key, value, allowed)
    if isinstance(value, str):
        try:
            value_f = float(value.strip())
        except ValueError:
            raise _fail(key, value, allowed) from None
    elif isinstance(value, (int, float)):
        try:
            value_f = float(value)
        except OverflowError:  # an integer beyond any float: JSON and YAML allow them
            raise _fail(key, value, allowed) from None
    else:
        raise _fail(key, value, allowed)
    if not math.isfinite(value_f) or (integer and not value_f.is_integer()) or not low <= value_f <= high:
        raise _fail(key, value, allowed)
    return value_f


def _int_range(low: int, high: int) -> Callable[[str, Any], int]:
    return lambda key, value: int(_number(key, value, low, high, integer=True))


def _float_range(low: float, high: float) -> Callable[[str, Any], float]:
    return lambda key, value: _number(key, value, low, high, integer=False)


def _plain_text(value: Any) -> bool:
    """A string with no control characters once surrounding whitespace is stripped."""
    return isinstance(value, str) and not CONTROL_CHARACTERS.search(value.strip())


def _text(key: str, value: Any) -> str:
    if not _plain_text(value) or not value.strip():
        raise _fail(key, value, "expected a non-empty string without control characters")
    return str(value).strip()


def busy_outside_file_next_to(time_file: str) -> str:
    """Where the inference meter writes the busy-outside file unless told: next to its time file."""
    return os.path.join(os.path.dirname(os.path.abspath(time_file)), BUSY_OUTSIDE_FILE_NAME)


def _path_or_auto(key: str, value: Any) -> str:
    if not _plain_text(value):
        raise _fail(
            key, value, 'expected a path without control characters, or "" for the automatic location'
        )
    return str(value).strip()


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # a comma-separated string, as consoles tend to produce
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(_plain_text(v) and v.strip() for v in value):
        raise _fail(key, value, "expected a list of non-empty strings without control characters")
    return tuple(dict.fromkeys(v.strip() for v in value))


def _approvals(key: str, value: Any) -> tuple[str, ...]:
    from ddcustom.device.baseline.approvals import ENDPOINTS_KEY, EXECUTABLES_KEY, ApprovalError, Approvals

    names = _names(key, value)
    try:
        if key == EXECUTABLES_KEY:
            Approvals.parse(executables=names)
        elif key == ENDPOINTS_KEY:
            Approvals.parse(endpoints=names)
        else:
            Approvals.parse(libraries=names)
    except ApprovalError as exc:
        raise ConfigError(shorten(str(exc), 400)) from None
    return names


def _fleet_known(key: str, value: Any) -> tuple[str, ...]:
    """SHA-256s, lower-case, sorted: the cloud's list of the group's common programs."""
    from ddcustom.device.baseline.approvals import ApprovalError, Approvals

    if not isinstance(value, list):
        raise _fail(key, value, "expected a list of SHA-256s (64 hex digits)")
    try:
        return tuple(sorted(Approvals.parse(fleet_known=value).fleet_known))
    except ApprovalError as exc:
        raise ConfigError(shorten(str(exc), 400)) from None


def _levels(key: str, value: Any) -> tuple[tuple[str, float], ...]:
    """A mapping from a program (SHA-256 or absolute path) to a level in % of one core."""
    from ddcustom.device.baseline.approvals import ApprovalError, Approvals

    if not isinstance(value, dict):
        raise _fail(key, value, 'expected a mapping such as {"/opt/app/bin/infer": 150}')
    try:
        parsed = Approvals.parse(cpu_levels=value).cpu_levels
    except ApprovalError as exc:
        raise ConfigError(shorten(str(exc), 400)) from None
    return tuple(sorted(parsed.items()))


def _redact_patterns(key: str, value: Any) -> tuple[str, ...]:
    from ddcustom.device.alerts.redact import MAX_PATTERNS, UnsafePattern, check_pattern

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, value, "expected a list of Python regular expressions")
    if len(value) > MAX_PATTERNS:
        raise _fail(key, value, f"expected at most {MAX_PATTERNS} patterns")
    problems = []
    for pattern in value:
        try:
            check_pattern(pattern)
        except UnsafePattern as exc:
            problems.append(f"configuration key {key!r}: pattern {shown(pattern)} refused: {exc}")
    if problems:
        raise ConfigError(*problems)
    return tuple(dict.fromkeys(value))


def _ports(key: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise _fail(key, value, "expected a list of port numbers from 1 to 65535")
    return frozenset(int(_number(key, v, 1, 65535, integer=True)) for v in value)


def _topic(key: str, value: Any) -> str:
    topic = _text(key, value)
    if topic.startswith("$") or "+" in topic or "#" in topic or len(topic.encode()) > 256:
        raise _fail(key, value, "expected an MQTT topic without wildcards, not reserved ($...), <= 256 bytes")
    return topic


def _log_level(key: str, value: Any) -> str:
    if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
        level = value.strip().upper()
        return "WARNING" if level == "WARN" else level
    raise _fail(key, value, f"expected one of {', '.join(LOG_LEVELS)}")


def _profile(key: str, value: Any, base_dir: Optional[Path] = None) -> Profile:
    """A relative profile path is taken from ``base_dir`` (the configuration file's folder) when given."""
    from ddcustom.device.detect.profile import ProfileError, load_profile

    if not isinstance(value, (str, dict, list)):
        raise _fail(key, value, "expected a built-in profile name, a file path, or a profile object")
    try:
        return load_profile(value, base_dir)
    except ProfileError as exc:
        raise ConfigError(f"configuration key {key!r}: {exc}") from None


# key -> (default, parser, field name, meaning: README.md's configuration table, made by `make docs`)
_Parser = Callable[[str, Any], Any]
# fmt: off
SCHEMA: dict[str, tuple[Any, _Parser, str, str]] = {
    "SampleIntervalSeconds": (300, _int_range(5, 86400), "report_interval_seconds",
        "report interval. Raised to 300 with a warning while `EnableDeviceDefenderReport` is true: Device "
        "Defender throttles faster reports"),
    "DetectIntervalSeconds": (10, _float_range(0.5, 3600), "detect_interval_seconds",
        "how often the device samples and evaluates its security profile (0.5 to 3600)"),
    "EnableGPUMetrics": (False, _bool, "enable_gpu_metrics",
        "read the feedback files and measure the GPU (NVML, or sysfs on Jetson)"),
    "EnableDeviceDefenderReport": (True, _bool, "enable_device_defender_report",
        "publish the report to Device Defender's reserved topic (local runs print reports either way; turn "
        "it off there to report faster than every 300 s)"),
    "UseShortNames": (False, _bool, "use_short_names",
        "Device Defender's short key names (`hed`, `met`, `cmet`, ...), for smaller messages"),
    "IncludeLoopback": (False, _bool, "include_loopback",
        "count loopback traffic, connections and listeners"),
    "GpuLoadFeedbackFile": ("/var/gpu_load_fb", _text, "gpu_load_feedback_file",
        "file the application writes the GPU load per inference into"),
    "InferenceTimeFeedbackFile": ("/var/gpu_inference_fb", _text, "inference_time_feedback_file",
        "file the application writes its mean inference time (ms) into"),
    "GpuBusyOutsideFeedbackFile": ("", _path_or_auto, "gpu_busy_outside_feedback_file",
        "file the inference meter writes the GPU busy % outside inferences into; automatic: "
        "`gpu_busy_outside_fb` next to `InferenceTimeFeedbackFile`, where the meter writes it by default "
        "(`/var/gpu_busy_outside_fb`). Without the meter it does not exist, and the metric is left out"),
    "MeterStaleSeconds": (30, _int_range(0, 86400), "meter_stale_seconds",
        "when that file has not been rewritten for this long, the meter (and with it the application) has "
        "stopped: the busiest GPU's busy % is reported as unexplained until it writes again. "
        "`0` turns this off"),
    "WatchedProcesses": ([], _names, "watched_processes",
        "process names of the device's application: their child processes are counted, their GPU use is "
        "expected"),
    "AllowedGpuProcesses": ([], _names, "allowed_gpu_processes",
        "other process names allowed to use the GPU"),
    "MiningPoolPorts": (DEFAULT_MINING_POOL_PORTS, _ports, "mining_pool_ports",
        "remote ports that count as mining-pool connections. Falco's list without 25, 8000, 8001, 8008, "
        "8080, 8118, 8888, 8899, which ordinary services use"),
    "MinerProcessNames": (DEFAULT_MINER_PROCESS_NAMES, _names, "miner_process_names",
        "process names that count as miners"),
    "SecurityProfile": ("crypto-mining", _profile, "security_profile",
        "the behaviors evaluated on the device: a built-in profile name, a JSON file path (relative: from "
        "the `--config` file's folder), or a profile object `{\"name\", \"behaviors\": [...]}` in Device "
        "Defender's behavior JSON"),
    "AlertTopic": ("ddcustom/{thingName}/alerts", _topic, "alert_topic",
        "IoT Core topic for alerts; `{thingName}` is replaced"),
    "LocalAlertTopic": ("ddcustom/alerts", _topic, "local_alert_topic",
        "local pub/sub topic for alerts, for other components"),
    "StateDirectory": ("", _path_or_auto, "state_directory",
        "alert spool, open alarms, last report id and the run marker. Automatic: `state/` in the component's "
        "work folder under Greengrass, `~/.local/state/ddcustom` elsewhere"),
    "FleetShadow": (True, _bool, "fleet_shadow",
        "keep the thing's named shadow `ddcustom` current (its alarms now, on change and hourly), for fleet "
        "indexing and `ddcustom cloud status`"),
    "PrivilegedReader": (True, _bool, "privileged_reader",
        "started as root (the recipe's Startup step is), fork the privileged reader before the component "
        "drops to its own user, so that it sees other users' processes as root does; `false`: other users' "
        "processes are known only by what anyone may read. Read when the component starts"),
    "BaselineLearningSeconds": (86400, _int_range(0, 366 * 86400), "baseline_learning_seconds",
        "how long the device learns what it runs and talks to (its baseline) before what it has not seen "
        "counts as new; restarts keep it, `ddcustom baseline relearn` starts it again"),
    "BaselineForgetSeconds": (90 * 86400, _int_range(3600, 3660 * 86400), "baseline_forget_seconds",
        "baseline entries not seen for this long are forgotten (operator approvals are kept)"),
    "ApprovedExecutables": ([], _approvals, "approved_executables",
        "executables (SHA-256, or absolute paths) approved on every device: never new. For an interpreter, "
        "the script it runs"),
    "ApprovedLibraries": ([], _approvals, "approved_libraries",
        "shared objects (SHA-256, or absolute paths) any program may map on every device: never new"),
    "ApprovedCpuLevels": ({}, _levels, "approved_cpu_levels",
        "programs (SHA-256, or absolute path: an interpreter's script) and the CPU each may use on every "
        "device, in % of one core, whatever it used while learning: `{\"/opt/app/bin/infer\": 150}`"),
    "ApprovedEndpoints": ([], _approvals, "approved_endpoints",
        "remote endpoints approved on every device: `CIDR` or `CIDR:port` (`[v6 CIDR]:port`)"),
    "FleetKnownExecutables": ([], _fleet_known, "fleet_known_executables",
        "SHA-256s of the programs common in the device's thing group, written by `ddcustom cloud prevalence "
        "--publish-known` (at most 5 000): known on this device, and learning what runs ends after the "
        "learning period's first hour instead of its end (docs/fleet.md)"),
    "FleetInventory": (False, _bool, "fleet_inventory",
        "publish the executables the baseline knows to `ddcustom/{thingName}/inventory` (daily in full, "
        "changes every 5 minutes), for the cloud's prevalence; `ddcustom cloud setup` turns it on with "
        "`--prevalence on`. The IoT policy must allow the topic (README, Topics)"),
    "EvidenceRedactPatterns": ([], _redact_patterns, "evidence_redact_patterns",
        "Python regular expressions for what else an alert's evidence must not carry: what they match in a "
        "command line, a process name or a loader variable is replaced by `[redacted]`, after the built-in "
        "rules ([docs/threat-model.md](docs/threat-model.md#redaction)); a pattern with groups cuts what its "
        "groups match. At most 16 patterns of at most 200 characters, each refused unless safe to run on "
        "text an attacker wrote (no backreferences; an estimated worst case bounded)"),
    "AlertSpoolMaxBytes": (10_000_000, _int_range(65536, 1_000_000_000), "alert_spool_max_bytes",
        "bound of the alert spool on disk"),
    "MaxReportListSize": (100, _int_range(1, MAX_REPORT_LIST_SIZE), "max_report_list_size",
        "longest list in a report, 1 to 300 (ports, connections, custom list values); `total` keeps the "
        "true count; 300 keeps a report under IoT Core's 128 KB"),
    "LogLevel": ("INFO", _log_level, "log_level", "`DEBUG`, `INFO`, `WARNING`, `ERROR`"),
}
# fmt: on

DEFAULTS: dict[str, Any] = {key: default for key, (default, *_) in SCHEMA.items()}


def parse_settings(
    raw: Optional[Mapping[str, Any]] = None, config_dir: Optional[Path] = None
) -> tuple[Settings, list[str]]:
    """Validate ``raw`` (missing keys take their defaults). Returns the settings and warnings.

    The ConfigError lists every bad key at once. ``config_dir``: the folder of the configuration file
    ``raw`` was read from; a relative SecurityProfile path is taken from there.
    """
    raw = dict(raw or {})
    problem = plain_data_problem(raw)
    if problem:
        raise ConfigError(f"configuration not usable: {problem}")
    problems: list[str] = []
    unknown = sorted(set(raw) - set(SCHEMA) - IGNORED_KEYS)
    if unknown:
        named = ", ".join(f"{shorten(repr(key))} (value {shown(raw[key])})" for key in unknown[:MAX_LISTED])
        more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        problems.append(f"unknown configuration key(s) {named}{more}; known keys: {', '.join(SCHEMA)}")
    values: dict[str, Any] = {}
    for key, (default, parser, field_name, _) in SCHEMA.items():
        value = raw.get(key, default)
        try:
            values[field_name] = (
                _profile(key, value, config_dir) if parser is _profile else parser(key, value)
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(*problems)
    if not values["gpu_busy_outside_feedback_file"]:  # where the meter writes it by default
        time_file = values["inference_time_feedback_file"]
        values["gpu_busy_outside_feedback_file"] = busy_outside_file_next_to(time_file)
    warnings: list[str] = list(values["security_profile"].warnings)
    if values["enable_device_defender_report"] and values["report_interval_seconds"] < MIN_REPORT_INTERVAL:
        warnings.append(
            f"SampleIntervalSeconds {values['report_interval_seconds']} raised to {MIN_REPORT_INTERVAL}: "
            "Device Defender throttles reports sent more often (set EnableDeviceDefenderReport false "
            "to report faster locally)"
        )
        values["report_interval_seconds"] = MIN_REPORT_INTERVAL
    return Settings(**values), warnings


def load_config_file(path: Union[str, Path], what: str = "configuration file") -> dict[str, Any]:
    """Read a JSON or YAML file holding a mapping (not yet validated); ``what`` names it in errors.

    Bounded and never blocking (only a regular file is read: the path may be a FIFO or /dev/zero)
    and strict: UTF-8 text, JSON data (YAML read as JSON would read it, without aliases) within the
    bounds, a mapping at the top level.
    """
    p = Path(path)
    try:
        data_bytes, _ = read_regular(p, MAX_DOCUMENT_BYTES + 1)
    except NotRegularFile as exc:  # a FIFO would block, a device might never end
        raise ConfigError(f"cannot read {what} {str(p)!r}: it is {exc}, not a regular file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}") from None
    if len(data_bytes) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{what} {str(p)!r} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text: {exc}") from None
    try:
        data = load_json(text) if p.suffix.lower() == ".json" else load_yaml(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {str(p)!r} does not parse: {shorten(str(exc), 1000)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(p)!r} must hold a mapping of keys, not {type(data).__name__}")
    return data

"""What ``ddcustom cloud setup|teardown`` works on: the options and every name derived from them."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ddcustom import COMPONENT_NAME, __version__
from ddcustom.tooling.cloud.fleet_index import FLEET_SHADOW as FLEET_SHADOW

TAG_KEY = "ddcustom:stack"
DEFAULT_STACK = "ddcustom"
DEFAULT_THING_GROUP = "GreengrassQuickStartGroup"  # the Greengrass installer's quick-start group
DEFAULT_TOKEN_EXCHANGE_ROLE = "GreengrassV2TokenExchangeRole"
DEFAULT_BUCKET = "greengrass-component-artifacts"  # gdk's bucket prefix: <bucket>-<region>-<account>
DEFAULT_PROFILE = "crypto-mining"
DEFAULT_MERGE_CONFIGURATION: dict[str, Any] = {"EnableGPUMetrics": True}
FALLBACK_REGION = "us-east-1"
MAX_NAME = 128  # security profile names
# Behaviors that move a device into quarantine on their first in-alarm event: each fires on something
# with no legitimate reason to be on a GPU inference device (a known miner binary, a connection to a
# known pool, a CUDA context neither the application nor allowed). The others measure load or process
# structure, which a new model, a traffic peak or an operator's second instance also move: they alert,
# a person decides. docs/deploying.md says the same.
DEFAULT_QUARANTINE_BEHAVIORS = ("miner-processes", "mining-pool-connections", "gpu-unknown-processes")
DEFAULT_FLEET_ALARM_THRESHOLD = "5"  # devices in alarm at once; "N%" for a share of the reporting fleet
# The silent-device check: three missed hourly heartbeats. At least two (one missed heartbeat is a
# reconnect), at most a week (later is no detector); runs every 15 minutes, between 5 and 60.
DEFAULT_SILENT_AFTER = 3 * 3600
SILENT_AFTER_RANGE = (2 * 3600, 7 * 86400)
DEFAULT_SILENT_EVERY = 15
SILENT_EVERY_RANGE = (5, 60)
# Rare programs (docs/fleet.md says why): on at most 2 devices, or under 1 % of them, in a group of at
# least 20 devices that report their inventory.
DEFAULT_RARE_DEVICES = 2
DEFAULT_RARE_SHARE = 1.0
DEFAULT_RARE_MIN_GROUP = 20
# `ddcustom cloud prevalence --publish-known`: programs on half of the group's devices for a week.
DEFAULT_KNOWN_SHARE = 50.0
DEFAULT_KNOWN_AFTER = 7 * 86400

_STACK_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")
_GROUP_RE = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_BEHAVIOR_RE = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")  # Device Defender's behavior name pattern
_THRESHOLD_RE = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


class OptionError(ValueError):
    """An option value that cannot be used; nothing was called yet."""


@dataclass(frozen=True)
class CloudOptions:
    region: str
    stack: str = DEFAULT_STACK
    thing_group: str = DEFAULT_THING_GROUP
    quarantine_group: str = ""  # empty: "<stack>-quarantine"
    component: str = COMPONENT_NAME
    component_version: str = __version__
    bucket: str = DEFAULT_BUCKET
    token_exchange_role: str = DEFAULT_TOKEN_EXCHANGE_ROLE
    profile: str = DEFAULT_PROFILE
    merge_configuration: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MERGE_CONFIGURATION))
    nucleus_version: Optional[str] = None  # None: keep the group's, else the newest
    email: Optional[str] = None
    detect: bool = True  # False: skip Device Defender Detect entirely
    quarantine: bool = True  # the quarantine function and its rule (docs/deploying.md says why on)
    quarantine_behaviors: tuple[str, ...] = DEFAULT_QUARANTINE_BEHAVIORS
    quarantine_policy: bool = False  # the IoT policy on the quarantine group
    fleet: bool = True  # fleet indexing of the named shadow, fleet metrics, the fleet alarm
    fleet_alarm_threshold: str = DEFAULT_FLEET_ALARM_THRESHOLD
    silent_check: Optional[bool] = None  # None: on when the fleet views are
    silent_after: int = DEFAULT_SILENT_AFTER
    silent_every: int = DEFAULT_SILENT_EVERY  # minutes between two runs of the check
    prevalence: bool = True  # the inventory rule, the prevalence function and table, rare-program alerts
    rare_devices: int = DEFAULT_RARE_DEVICES
    rare_share: float = DEFAULT_RARE_SHARE  # percent of the group's reporting devices
    rare_min_group: int = DEFAULT_RARE_MIN_GROUP

    def __post_init__(self) -> None:
        if not _STACK_RE.match(self.stack):
            raise OptionError(
                f"--stack {self.stack!r}: expected a letter then up to 31 letters, digits or '-'"
            )
        for option, group in (
            ("--thing-group", self.thing_group),
            ("--quarantine-group", self.quarantine_group),
        ):
            if group and not _GROUP_RE.match(group):
                raise OptionError(f"{option} {group!r}: expected 1-128 of letters, digits, ':', '_', '-'")
        if len(self.security_profile) > MAX_NAME:
            raise OptionError(
                f"security profile name {self.security_profile!r} is longer than {MAX_NAME} characters: "
                "choose a shorter --stack or profile name"
            )
        if not isinstance(self.merge_configuration, dict):
            raise OptionError("--merge-config: expected a JSON object")
        if self.quarantine and not self.quarantine_behaviors:
            raise OptionError("--quarantine-behaviors: name at least one behavior, or use --quarantine off")
        for behavior in self.quarantine_behaviors:
            if not _BEHAVIOR_RE.match(behavior):
                raise OptionError(
                    f"--quarantine-behaviors {behavior!r}: expected 1-128 of letters, digits, ':', '_', '-'"
                )
        self.fleet_threshold()  # refuses a bad value now, before any call
        self._check_silent()
        self._check_rare()
        if self.quarantine:
            self.alert_topic_thing_level()

    def _check_silent(self) -> None:
        low, high = SILENT_AFTER_RANGE
        if not low <= self.silent_after <= high:
            raise OptionError(
                f"--silent-after {self.silent_after}: expected {low} to {high} seconds (the component "
                "updates its shadow at least hourly: less than two hours would flag healthy devices)"
            )
        low, high = SILENT_EVERY_RANGE
        if not low <= self.silent_every <= high:
            raise OptionError(f"--silent-every {self.silent_every}: expected {low} to {high} minutes")
        if self.silent_check and not self.fleet:
            raise OptionError("--silent-check on needs the fleet index of the shadow: use --fleet on")

    def _check_rare(self) -> None:
        if not 1 <= self.rare_devices <= 1000:
            raise OptionError(f"--rare-devices {self.rare_devices}: expected 1 to 1000 devices")
        if not 0 <= self.rare_share <= 50:
            raise OptionError(f"--rare-share {self.rare_share:g}: expected a percentage from 0 to 50")
        if not 2 <= self.rare_min_group <= 1_000_000:
            raise OptionError(f"--rare-min-group {self.rare_min_group}: expected 2 to 1000000 devices")

    @property
    def silent_check_on(self) -> bool:
        return self.fleet if self.silent_check is None else self.silent_check

    # ---- names derived from the stack (teardown finds them again from the same options) ----
    @property
    def quarantine_group_name(self) -> str:
        return self.quarantine_group or f"{self.stack}-quarantine"

    @property
    def sns_topic(self) -> str:
        return f"{self.stack}-alerts"

    @property
    def iot_role(self) -> str:
        """Role IoT assumes to publish alerts (topic rule and Detect alert target) to the topic."""
        return f"{self.stack}-iot-alerts"

    @property
    def mitigation_role(self) -> str:
        return f"{self.stack}-quarantine-action"

    @property
    def artifact_policy(self) -> str:
        return f"{self.stack}-artifact-access"

    @property
    def topic_rule(self) -> str:
        return self.stack.replace("-", "_") + "_alerts"  # rule names allow only [a-zA-Z0-9_]

    @property
    def security_profile(self) -> str:
        return f"{self.stack}-{self.profile}"

    @property
    def mitigation_action(self) -> str:
        return f"{self.stack}-quarantine"

    @property
    def deployment_name(self) -> str:
        return f"{self.stack}-{self.component}"

    @property
    def quarantine_function(self) -> str:
        return f"{self.stack}-quarantine"

    @property
    def quarantine_function_role(self) -> str:
        return f"{self.stack}-quarantine-function"

    @property
    def quarantine_log_group(self) -> str:
        return f"/aws/lambda/{self.quarantine_function}"

    @property
    def quarantine_rule(self) -> str:
        return self.stack.replace("-", "_") + "_quarantine"

    @property
    def quarantine_iot_policy(self) -> str:
        return f"{self.stack}-quarantine-policy"

    @property
    def fleet_metric_in_alarm(self) -> str:
        return f"{self.stack}-devices-in-alarm"

    @property
    def fleet_metric_reporting(self) -> str:
        return f"{self.stack}-devices-reporting"

    @property
    def fleet_alarm(self) -> str:
        return f"{self.stack}-fleet-in-alarm"

    @property
    def indexing_record(self) -> str:
        """SSM parameter that records what setup added to the account's fleet indexing configuration."""
        return f"/ddcustom/{self.stack}/fleet-indexing-added"

    @property
    def schedule_group(self) -> str:
        """The EventBridge Scheduler group that holds the stack's schedules (and carries its tag)."""
        return self.stack

    @property
    def silent_function(self) -> str:
        return f"{self.stack}-silent-devices"

    @property
    def silent_function_role(self) -> str:
        return f"{self.stack}-silent-devices-function"

    @property
    def silent_schedule_role(self) -> str:
        return f"{self.stack}-silent-devices-schedule"

    @property
    def prevalence_function(self) -> str:
        return f"{self.stack}-prevalence"

    @property
    def prevalence_function_role(self) -> str:
        return f"{self.stack}-prevalence-function"

    @property
    def prevalence_schedule_role(self) -> str:
        return f"{self.stack}-prevalence-schedule"

    @property
    def prevalence_table(self) -> str:
        return f"{self.stack}-prevalence"

    @property
    def inventory_rule(self) -> str:
        return self.stack.replace("-", "_") + "_inventory"

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_KEY: self.stack}

    def fleet_threshold(self) -> tuple[float, bool]:
        """``--fleet-alarm-threshold``: (value, is a percentage of the reporting devices)."""
        match = _THRESHOLD_RE.match(self.fleet_alarm_threshold.strip())
        value = float(match.group(1)) if match else -1.0
        percent = bool(match and match.group(2))
        if not match or (percent and value >= 100):
            raise OptionError(
                f"--fleet-alarm-threshold {self.fleet_alarm_threshold!r}: expected a number of devices "
                "(e.g. 5) or a share of the reporting devices below 100% (e.g. 2%)"
            )
        return value, percent

    def alert_topic_thing_level(self) -> int:
        """The 1-based level of ``{thingName}`` in the alert topic: the rule passes ``topic(level)`` to the
        quarantine function, which checks it against the alert's thingName."""
        topic = str(self.merge_configuration.get("AlertTopic", "ddcustom/{thingName}/alerts"))
        levels = topic.split("/")
        if "{thingName}" not in levels:
            raise OptionError(
                f"AlertTopic {topic!r}: quarantine needs {{thingName}} as a whole topic level (as in "
                "ddcustom/{thingName}/alerts) to check an alert against the thing that sent it; "
                "change AlertTopic or use --quarantine off"
            )
        return levels.index("{thingName}") + 1

    def alert_topic_filter(self) -> str:
        """The MQTT filter matching every device's alert topic (``{thingName}`` becomes ``+``)."""
        topic = str(self.merge_configuration.get("AlertTopic", "ddcustom/{thingName}/alerts"))
        return topic.replace("{thingName}", "+")


def default_region(environ: Optional[dict[str, str]] = None) -> str:
    """AWS_REGION, then AWS_DEFAULT_REGION, then the AWS config file's region, then us-east-1."""
    env = os.environ if environ is None else environ
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        return region
    import boto3

    return boto3.Session().region_name or FALLBACK_REGION


def parse_merge_configuration(text: str) -> dict[str, Any]:
    """``--merge-config``: a JSON object, or ``@FILE`` holding one (JSON, or YAML unless it ends in .json);
    checked against the component schema."""
    from ddcustom.device.config import ConfigError, load_config_file, parse_settings

    source = "--merge-config"
    if text.startswith("@"):
        source = text[1:]
        try:
            value: Any = load_config_file(source, what="--merge-config file")
        except ConfigError as exc:
            raise OptionError(str(exc)) from None
    else:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise OptionError(f"{source}: not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise OptionError(f"{source}: expected a JSON object of configuration keys")
    try:
        parse_settings(value)
        json.dumps(value)  # it goes to the devices as JSON: a YAML date, say, cannot
    except ConfigError as exc:
        raise OptionError(f"{source}: {exc}") from None
    except TypeError as exc:
        raise OptionError(f"{source}: not a JSON value: {exc}") from None
    return value

"""``ddcustom cloud setup|teardown|status|release``: the command line of the cloud side.

This module is imported by the main CLI on devices too, so boto3 is imported only inside run_cloud.
Exit codes: 0 done, 1 an AWS call failed (the message says what was already done), 2 nothing was
changed because of an option, the credentials, the region or a conflicting resource.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, TextIO

from ddcustom.tooling.cloud.options import (
    DEFAULT_BUCKET,
    DEFAULT_FLEET_ALARM_THRESHOLD,
    DEFAULT_KNOWN_AFTER,
    DEFAULT_KNOWN_SHARE,
    DEFAULT_MERGE_CONFIGURATION,
    DEFAULT_PROFILE,
    DEFAULT_QUARANTINE_BEHAVIORS,
    DEFAULT_RARE_DEVICES,
    DEFAULT_RARE_MIN_GROUP,
    DEFAULT_RARE_SHARE,
    DEFAULT_SILENT_AFTER,
    DEFAULT_SILENT_EVERY,
    DEFAULT_STACK,
    DEFAULT_THING_GROUP,
    DEFAULT_TOKEN_EXCHANGE_ROLE,
    TAG_KEY,
    CloudOptions,
    OptionError,
    default_region,
    parse_merge_configuration,
)

if TYPE_CHECKING:
    from ddcustom.device.detect.profile import Profile

PLAN_ACCOUNT = "<account-id>"  # what --plan shows in place of the account id
# What SearchIndex answers where fleet indexing (or the shadow's fields) is off or still building.
NO_INDEX = frozenset({"ResourceNotFoundException", "InvalidRequestException", "IndexNotReadyException"})


# What a cloud command says where boto3 is missing (``ddcustom cloud`` alone says the same: cli/main.py).
NEEDS_BOTO3 = (
    "ddcustom cloud needs boto3: pip install boto3 (in the ddcustom repository: pip install '.[cloud]')"
)


def add_cloud_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``cloud setup|teardown|status|release`` to the main parser's subparsers."""
    from ddcustom import COMPONENT_NAME, __version__

    parser = subparsers.add_parser(
        "cloud",
        help="provision or remove the cloud side (alerts, quarantine, fleet views, deployment)",
        description="Provision (setup) or remove (teardown) the cloud side of ddcustom, see the fleet "
        "(status), take a device out of quarantine (release). Setup and teardown are safe to run twice; "
        f"teardown removes only what carries the tag {TAG_KEY}=<stack>.",
    )
    actions = parser.add_subparsers(
        dest="cloud_command", metavar="{setup,teardown,status,release,prevalence}"
    )
    actions.required = True
    setup = actions.add_parser("setup", help="create what is missing (idempotent)")
    teardown = actions.add_parser("teardown", help="remove what setup created (tagged with the stack)")
    status = actions.add_parser("status", help="devices in alarm now and fleet totals (fleet index)")
    release = actions.add_parser("release", help="take a device out of the quarantine group")
    prevalence = actions.add_parser(
        "prevalence",
        help="how many devices of the group run each program (rare first), the devices that run one, or "
        "--publish-known",
        description="Read the prevalence table that setup makes (--prevalence on): the programs the devices "
        "of a thing group run, rarest first; with SHA256 or PATH, the devices that run it; with "
        "--publish-known, the group's common programs into the deployment (FleetKnownExecutables).",
    )
    for sub in (setup, teardown, status, release, prevalence):
        sub.add_argument(
            "--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, config, us-east-1)"
        )
    for sub in (setup, teardown, release):
        sub.add_argument(
            "--stack", default=DEFAULT_STACK, help=f"stack name, prefix and tag value ({DEFAULT_STACK})"
        )
        sub.add_argument("--quarantine-group", default="", help="quarantine thing group (<stack>-quarantine)")
    for sub in (setup, teardown):
        sub.add_argument(
            "--thing-group", default=DEFAULT_THING_GROUP, help=f"devices to deploy to ({DEFAULT_THING_GROUP})"
        )
        sub.add_argument("--component", default=COMPONENT_NAME, help=f"component name ({COMPONENT_NAME})")
        sub.add_argument(
            "--component-version", default=__version__, help=f"version to deploy ({__version__})"
        )
        sub.add_argument(
            "--bucket",
            default=DEFAULT_BUCKET,
            help=f"gdk bucket prefix; <bucket>-<region>-<account> ({DEFAULT_BUCKET})",
        )
        sub.add_argument(
            "--token-exchange-role",
            default=DEFAULT_TOKEN_EXCHANGE_ROLE,
            help=f"the devices' token exchange role ({DEFAULT_TOKEN_EXCHANGE_ROLE})",
        )
        sub.add_argument(
            "--profile-name",
            help=f"security profile: a built-in name or a JSON file (default: SecurityProfile in "
            f"--merge-config, else {DEFAULT_PROFILE}); the devices get the same one",
        )
        sub.add_argument("--no-detect", action="store_true", help="leave out Device Defender Detect")
        sub.add_argument(
            "--dry-run", action="store_true", help="print the calls that change things; make none"
        )
    setup.add_argument(
        "--plan",
        action="store_true",
        help="print what setup would create in an empty account; needs no credentials, calls nothing",
    )
    setup.add_argument("--email", help="subscribe this address to the alerts topic")
    setup.add_argument(
        "--merge-config",
        help="component configuration to merge, JSON or @FILE (JSON, or YAML unless named *.json) "
        f"(default {json.dumps(DEFAULT_MERGE_CONFIGURATION)})",
    )
    setup.add_argument(
        "--nucleus-version", help="aws.greengrass.Nucleus version (default: the group's, else newest)"
    )
    setup.add_argument(
        "--quarantine",
        choices=("on", "off"),
        default="on",
        help="a Lambda function that moves a device into the quarantine group on an in-alarm alert of "
        "--quarantine-behaviors (default on; docs/deploying.md says why)",
    )
    setup.add_argument(
        "--quarantine-behaviors",
        default=",".join(DEFAULT_QUARANTINE_BEHAVIORS),
        help=f"comma-separated behaviors that quarantine ({','.join(DEFAULT_QUARANTINE_BEHAVIORS)})",
    )
    setup.add_argument(
        "--quarantine-policy",
        action="store_true",
        help="attach an IoT policy to the quarantine group that denies the devices' publishes except "
        "their own $aws/things/<thing>/ topics and their alert topic",
    )
    setup.add_argument(
        "--fleet",
        choices=("on", "off"),
        default="on",
        help="fleet indexing of the named shadow ddcustom (merged into the account's), fleet metrics and "
        "the fleet alarm (default on)",
    )
    setup.add_argument(
        "--fleet-alarm-threshold",
        default=DEFAULT_FLEET_ALARM_THRESHOLD,
        help="alarm to the SNS topic when more than this many devices, or N%% of the reporting devices, "
        f"are in alarm at once ({DEFAULT_FLEET_ALARM_THRESHOLD})",
    )
    setup.add_argument(
        "--silent-check",
        choices=("on", "off"),
        help="a scheduled function that alerts once when a device's shadow stops being updated, and once "
        "when it reports again (default: on with --fleet on)",
    )
    setup.add_argument(
        "--silent-after",
        type=int,
        default=DEFAULT_SILENT_AFTER,
        metavar="SECONDS",
        help=f"a device is silent after this long without a shadow update ({DEFAULT_SILENT_AFTER}: three "
        "missed hourly updates; 7200 to 604800)",
    )
    setup.add_argument(
        "--silent-every",
        type=int,
        default=DEFAULT_SILENT_EVERY,
        metavar="MINUTES",
        help=f"how often the silent-device check runs ({DEFAULT_SILENT_EVERY}; 5 to 60)",
    )
    setup.add_argument(
        "--prevalence",
        choices=("on", "off"),
        default="on",
        help="the devices' inventories in DynamoDB, how many devices of the group run each program, and "
        "an alert for a program few devices run (default on; docs/fleet.md)",
    )
    setup.add_argument(
        "--rare-devices",
        type=int,
        default=DEFAULT_RARE_DEVICES,
        help=f"a program on at most this many devices is rare ({DEFAULT_RARE_DEVICES})",
    )
    setup.add_argument(
        "--rare-share",
        type=float,
        default=DEFAULT_RARE_SHARE,
        metavar="PERCENT",
        help=f"...or on under this share of the group's devices ({DEFAULT_RARE_SHARE:g})",
    )
    setup.add_argument(
        "--rare-min-group",
        type=int,
        default=DEFAULT_RARE_MIN_GROUP,
        help=f"no program is rare in a group of fewer reporting devices ({DEFAULT_RARE_MIN_GROUP})",
    )
    status.add_argument("--thing-group", help="only devices in this thing group")
    status.add_argument(
        "--silent-after",
        type=int,
        default=DEFAULT_SILENT_AFTER,
        metavar="SECONDS",
        help=f"list devices without a shadow update for this long as silent ({DEFAULT_SILENT_AFTER})",
    )
    status.add_argument("--behavior", help="only devices with this behavior in alarm")
    status.add_argument("--json", action="store_true", help="print JSON")
    release.add_argument("thing", help="the thing name of the device")
    _add_prevalence_arguments(prevalence)
    parser.set_defaults(func=run_cloud)
    return parser


def _add_prevalence_arguments(prevalence: argparse.ArgumentParser) -> None:
    from ddcustom import COMPONENT_NAME

    prevalence.add_argument(
        "identity", nargs="?", metavar="SHA256|PATH", help="list the devices that run this program"
    )
    prevalence.add_argument(
        "--stack",
        default=DEFAULT_STACK,
        help=f"stack name: its table is <stack>-prevalence ({DEFAULT_STACK})",
    )
    prevalence.add_argument(
        "--thing-group", help=f"only this thing group (--publish-known: default {DEFAULT_THING_GROUP})"
    )
    prevalence.add_argument("--rare", action="store_true", help="only the rare programs")
    prevalence.add_argument("--json", action="store_true", help="print JSON")
    prevalence.add_argument("--limit", type=int, help="at most this many programs (or devices) per group")
    prevalence.add_argument(
        "--publish-known",
        action="store_true",
        help="write the group's common programs into the deployment's configuration of the component "
        "(FleetKnownExecutables): a new device knows them from its first hour",
    )
    prevalence.add_argument(
        "--known-share",
        type=float,
        default=DEFAULT_KNOWN_SHARE,
        metavar="PERCENT",
        help="--publish-known: programs on at least this share of the group's devices "
        f"({DEFAULT_KNOWN_SHARE:g}; 50 to 100)",
    )
    prevalence.add_argument(
        "--known-after",
        type=int,
        default=DEFAULT_KNOWN_AFTER,
        metavar="SECONDS",
        help=f"--publish-known: ...for at least this long ({DEFAULT_KNOWN_AFTER}: a week)",
    )
    prevalence.add_argument("--component", default=COMPONENT_NAME, help=f"component name ({COMPONENT_NAME})")
    prevalence.add_argument(
        "--dry-run", action="store_true", help="--publish-known: print the deployment it would make"
    )


def options_from_args(args: argparse.Namespace) -> tuple[CloudOptions, Profile]:
    """The options, and the security profile that both the devices and Device Defender evaluate."""
    merge_text = getattr(args, "merge_config", None)
    merge = parse_merge_configuration(merge_text) if merge_text else dict(DEFAULT_MERGE_CONFIGURATION)
    profile, merge = _device_profile(args.profile_name, merge)
    opts = CloudOptions(
        region=args.region or default_region(),
        stack=args.stack,
        thing_group=args.thing_group,
        quarantine_group=args.quarantine_group,
        component=args.component,
        component_version=args.component_version,
        bucket=args.bucket,
        token_exchange_role=args.token_exchange_role,
        profile=profile.name,
        merge_configuration=merge,
        nucleus_version=getattr(args, "nucleus_version", None),
        email=getattr(args, "email", None),
        detect=not args.no_detect,
        # Teardown takes every optional part into account, so that it removes what any setup made.
        quarantine=getattr(args, "quarantine", "on") == "on",
        quarantine_behaviors=tuple(
            b.strip()
            for b in getattr(args, "quarantine_behaviors", ",".join(DEFAULT_QUARANTINE_BEHAVIORS)).split(",")
            if b.strip()
        ),
        quarantine_policy=getattr(args, "quarantine_policy", True),
        fleet=getattr(args, "fleet", "on") == "on",
        fleet_alarm_threshold=getattr(args, "fleet_alarm_threshold", DEFAULT_FLEET_ALARM_THRESHOLD),
        silent_check=_on_off(getattr(args, "silent_check", None)),
        silent_after=getattr(args, "silent_after", DEFAULT_SILENT_AFTER),
        silent_every=getattr(args, "silent_every", DEFAULT_SILENT_EVERY),
        prevalence=getattr(args, "prevalence", "on") == "on",
        rare_devices=getattr(args, "rare_devices", DEFAULT_RARE_DEVICES),
        rare_share=getattr(args, "rare_share", DEFAULT_RARE_SHARE),
        rare_min_group=getattr(args, "rare_min_group", DEFAULT_RARE_MIN_GROUP),
    )
    return opts, profile


def _on_off(value: Optional[str]) -> Optional[bool]:
    return None if value is None else value == "on"


def _simple_options(args: argparse.Namespace) -> CloudOptions:
    """The options of ``status``, ``release`` and ``prevalence``: no profile, no deployment."""
    from ddcustom import COMPONENT_NAME

    return CloudOptions(
        region=args.region or default_region(),
        stack=getattr(args, "stack", DEFAULT_STACK),
        quarantine_group=getattr(args, "quarantine_group", ""),
        thing_group=getattr(args, "thing_group", None) or DEFAULT_THING_GROUP,
        component=getattr(args, "component", COMPONENT_NAME),
    )


def _device_profile(option: Optional[str], merge: dict[str, Any]) -> tuple[Profile, dict[str, Any]]:
    """The profile of ``--profile-name`` or of SecurityProfile in the merge configuration (they must
    agree), and the merge configuration that has the devices evaluate that same profile."""
    from ddcustom.device.detect.profile import ProfileError, builtin_profiles, load_profile

    in_merge = merge.get("SecurityProfile")
    if option is not None and in_merge is not None and in_merge != option:
        raise OptionError(
            f"--profile-name {option!r} differs from SecurityProfile in --merge-config: the cloud "
            "evaluates the profile the devices evaluate; give one of the two"
        )
    value = in_merge if option is None else option
    try:
        profile = load_profile(DEFAULT_PROFILE if value is None else value)
    except ProfileError as exc:
        raise OptionError(f"--profile-name {value!r}: {exc}") from None
    if option is not None and in_merge is None and option != DEFAULT_PROFILE:
        # a file on this machine: the devices get its content; a built-in name: they have the same file
        merge = {**merge, "SecurityProfile": option if option in builtin_profiles() else profile.to_json()}
    return profile, merge


def run_cloud(
    args: argparse.Namespace,
    clients: Optional[Any] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Runs ``cloud setup|teardown|status|release``; ``clients`` (service key -> client) is for tests."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        import botocore.exceptions as boto_errors
    except ImportError:
        print(NEEDS_BOTO3, file=err)
        return 2
    from ddcustom.tooling.cloud import runner
    from ddcustom.tooling.cloud.steps import error_code

    try:
        if args.cloud_command in ("status", "release", "prevalence"):
            opts, profile = _simple_options(args), None
        else:
            opts, profile = options_from_args(args)
        _check_region(opts.region)
        if getattr(args, "plan", False) and args.dry_run:
            raise OptionError("--plan and --dry-run: give one (--plan needs no credentials)")
    except OptionError as exc:
        print(f"ddcustom cloud: {exc}", file=err)
        return 2
    try:
        return _run(args, opts, profile, clients, out)
    except OptionError as exc:
        print(f"ddcustom cloud: {exc}", file=err)
        return 2
    except (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError):
        print(
            "ddcustom cloud: no AWS credentials found; set AWS_PROFILE, run `aws configure`, or export "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. Nothing was changed.",
            file=err,
        )
        return 2
    except (boto_errors.EndpointConnectionError, boto_errors.ConnectTimeoutError) as exc:
        print(
            f"ddcustom cloud: cannot reach AWS in {opts.region} ({exc}); check --region and the network",
            file=err,
        )
        return 2
    except runner.StepFailed as exc:
        print(f"ddcustom cloud: {exc}", file=err)
        if exc.done:
            print(
                f"already done before the failure (tagged {TAG_KEY}={opts.stack}; run the command again to "
                f"finish, or `ddcustom cloud teardown --stack {opts.stack} --region {opts.region}`):",
                file=err,
            )
            for label in exc.done:
                print(f"  - {label}", file=err)
        return 1
    except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
        print(f"ddcustom cloud: {runner.explain(exc)}. Nothing was changed.", file=err)
        refused = isinstance(exc, boto_errors.ClientError) and error_code(exc) in runner.CREDENTIALS
        return 2 if refused else 1


def _run(
    args: argparse.Namespace,
    opts: CloudOptions,
    profile: Optional[Profile],
    clients: Optional[Any],
    out: TextIO,
) -> int:
    from ddcustom.tooling.cloud import runner
    from ddcustom.tooling.cloud.clients import client_factory
    from ddcustom.tooling.cloud.plan import build_steps
    from ddcustom.tooling.cloud.steps import Env

    if getattr(args, "plan", False) and profile is not None:
        env = Env(account=PLAN_ACCOUNT, region=opts.region, partition=_partition(opts.region))
        steps, notes = build_steps(opts, env, profile)
        for note in notes:
            print(f"note     {note}", file=out)
        print(
            f"plan of setup for stack {opts.stack!r} in an empty account ({PLAN_ACCOUNT}), region "
            f"{env.region}; nothing was called. An account without Device Defender Detect skips its steps.",
            file=out,
        )
        return runner.plan(steps, out)
    aws = clients or client_factory(opts.region)
    if args.cloud_command == "status":
        from botocore.exceptions import ClientError

        from ddcustom.tooling.cloud.status import fleet_status, print_status
        from ddcustom.tooling.cloud.steps import error_code

        try:
            status = fleet_status(aws, args.thing_group, args.behavior, time.time(), args.silent_after)
        except ClientError as exc:
            if error_code(exc) not in NO_INDEX:
                raise
            raise OptionError(
                f"{runner.explain(exc)}; the fleet index of the named shadow ddcustom is not there or not "
                "ready: `ddcustom cloud setup` turns it on (--fleet on), and a new index takes minutes"
            ) from None
        print_status(status, out, args.json)
        return 0
    if args.cloud_command == "release":
        from ddcustom.tooling.cloud.release import release

        return release(aws, opts, args.thing, out)
    if args.cloud_command == "prevalence":
        return _prevalence(args, opts, aws, out)
    assert profile is not None
    identity = aws("sts").get_caller_identity()
    env = Env(account=identity["Account"], region=opts.region, partition=identity["Arn"].split(":")[1])
    steps, notes = build_steps(opts, env, profile)
    for note in notes:
        print(f"note     {note}", file=out)
    print(
        f"{args.cloud_command} stack {opts.stack!r} in account {env.account}, region {env.region}", file=out
    )
    if args.cloud_command == "teardown":
        return runner.teardown(steps, aws, out, dry_run=args.dry_run)
    return runner.setup(steps, aws, out, dry_run=args.dry_run)


def _prevalence(args: argparse.Namespace, opts: CloudOptions, aws: Any, out: TextIO) -> int:
    from botocore.exceptions import ClientError

    from ddcustom.tooling.cloud.clients import dynamodb_table
    from ddcustom.tooling.cloud.prevalence_commands import run_prevalence
    from ddcustom.tooling.cloud.steps import error_code

    try:
        return run_prevalence(aws, dynamodb_table(opts.region, opts.prevalence_table), opts, args, out)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException" or exc.operation_name not in ("Query", "GetItem"):
            raise
        raise OptionError(
            f"no prevalence table {opts.prevalence_table} in {opts.region}: `ddcustom cloud setup` makes it "
            "(--prevalence on; give the same --stack)"
        ) from None


def _partition(region: str) -> str:
    import boto3

    return str(boto3.Session().get_partition_for_region(region))


def _check_region(region: str) -> None:
    """A region name IoT does not know is refused before any call (a typo would fail much later)."""
    import boto3

    session = boto3.Session()
    known = {
        r
        for partition in session.get_available_partitions()
        for r in session.get_available_regions("iot", partition)
    }
    if region not in known:
        raise OptionError(
            f"--region {region!r}: not a region where AWS IoT is offered; one of {', '.join(sorted(known))}"
        )

"""Command line: ``ddcustom`` (also ``python -m ddcustom``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ddcustom import __version__
from ddcustom.device.config import ConfigError, Settings, load_config_file, parse_settings
from ddcustom.device.run.process import setup_logging

log = logging.getLogger("ddcustom")

EXIT_CONFIG = 2

# Values `simulate` writes: the article's mining scenario, and values well inside the default profile.
SCENARIOS = {"mining": (85.0, 180.0), "normal": (20.0, 45.0)}
CLOUD_HELP_WITHOUT_BOTO3 = (
    "ddcustom cloud needs boto3, which this Python does not have: pip install boto3 (in the ddcustom "
    "repository: pip install '.[cloud]')"
)


def boto3_available() -> bool:
    """Whether boto3 and botocore can be imported here: looked up, not imported (that takes a while)."""
    for name in ("boto3", "botocore"):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # ValueError: an entry of None in sys.modules
            return False
    return True


def load_settings(path: Optional[str]) -> Settings:
    """Settings from a --config file (or defaults); warnings are logged. A relative SecurityProfile
    path in the file is taken from the file's folder, as the file's author sees it."""
    raw = load_config_file(path) if path else {}
    settings, warnings = parse_settings(raw, Path(path).parent if path else None)
    for warning in warnings:
        log.warning("%s", warning)
    return settings


# ---- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ddcustom.device.run import privileges
    from ddcustom.device.sources.source import Machine

    under_greengrass = bool(os.environ.get("SVCUID"))
    # The code is loaded before the privileges go: whatever is imported later must be readable by the
    # component's user too.
    if under_greengrass:
        from ddcustom.device.run.greengrass import run_under_greengrass
    else:
        from ddcustom.device.run.local import run_local
    # Then, before a thread starts or a configuration is read: the privileged reader, and the
    # component's own user (docs/threat-model.md).
    try:
        account = privileges.component_account(args.user, under_greengrass)
    except ValueError as exc:
        print(f"ddcustom run: --user: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    started_as_root = os.geteuid() == 0
    started = privileges.start(account, with_reader=args.privileged_reader)
    log.info("other users' processes: %s", privileges.MODES[started.mode])
    machine = Machine(privileged=started.reader)
    if under_greengrass:
        return run_under_greengrass(config_path=args.config, machine=machine, started_as_root=started_as_root)
    if not args.config:
        log.info("no --config: the default settings (`ddcustom check --config FILE` validates a file)")
    return run_local(load_settings(args.config), args.thing, machine)


def cmd_collect(args: argparse.Namespace) -> int:
    from ddcustom.device.outputs.report import ReportBuilder
    from ddcustom.device.sources.collect import Collector

    settings = load_settings(args.config)
    collector = Collector(settings)
    try:
        report = ReportBuilder(settings).build(collector.sample(), None)
    finally:
        collector.close()
    json.dump(report, sys.stdout, indent=None if args.compact else 2)
    sys.stdout.write("\n")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        if len(exc.problems) < 2:
            raise
        listed = "".join(f"\n  - {problem}" for problem in exc.problems)
        print(
            f"ddcustom: {args.config}: {len(exc.problems)} configuration problems:{listed}", file=sys.stderr
        )
        return EXIT_CONFIG
    profile = settings.security_profile
    print(f"{args.config}: OK ({len(profile.behaviors)} behaviors in security profile {profile.name!r})")
    from ddcustom.device.run import privileges

    mode = privileges.PRIVILEGED_READER if settings.privileged_reader else privileges.UNPRIVILEGED
    print(f"started as root, as the recipe does: {privileges.MODES[mode]}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    load, inference_ms = SCENARIOS[args.scenario]
    load_file = args.load_file or settings.gpu_load_feedback_file
    time_file = args.time_file or settings.inference_time_feedback_file
    if os.path.abspath(load_file) == os.path.abspath(time_file):
        print(f"ddcustom simulate: the load and time files are the same file: {load_file}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        write_numbers_together({load_file: load, time_file: inference_ms})
    except OSError as exc:
        print(
            f"ddcustom simulate: cannot write {exc.filename}: {exc.strerror}; neither file was changed",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    print(f"{args.scenario}: wrote {load:g} to {load_file} and {inference_ms:g} to {time_file}")
    return 0


def write_numbers_together(numbers: dict[str, float]) -> None:
    """Write each number to its file (mode 0644), all files or none.

    A temp file beside each target first, then the renames; when a rename fails, the files already
    renamed get their previous content back (kept as a hard link) or are removed if they were new.
    OSError names the file that failed.
    """
    temps: dict[str, str] = {}
    backups: dict[str, Optional[str]] = {}  # target -> hard link to its previous file, None: was new
    try:
        for target, number in numbers.items():
            temps[target] = _temp_beside(target, f"{number:g}\n")
        for target, temp in temps.items():
            _replace_keeping_previous(temp, target, backups)
    except OSError:
        for target, backup in reversed(list(backups.items())):
            with contextlib.suppress(OSError):
                if backup is None:
                    os.unlink(target)
                else:
                    os.replace(backup, target)
        raise
    finally:
        for leftover in [*temps.values(), *(b for b in backups.values() if b)]:
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def _temp_beside(target: str, text: str) -> str:
    """A new file holding ``text`` in ``target``'s folder; OSError names ``target``."""
    directory, name = os.path.split(os.path.abspath(target))
    temp = ""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; the component may run as another user
            os.fsync(f.fileno())
    except OSError as exc:
        if temp:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        raise OSError(exc.errno, exc.strerror, target) from None
    return temp


def _replace_keeping_previous(temp: str, target: str, backups: dict[str, Optional[str]]) -> None:
    """``os.replace(temp, target)``; once done, ``backups`` says how to undo it."""
    backup = None
    try:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(target).st_mode):  # onto a directory the rename fails anyway
                backup = f"{temp}.previous"
                os.link(target, backup, follow_symlinks=False)  # a symbolic link is kept as one
        os.replace(temp, target)
    except OSError as exc:
        if backup:
            with contextlib.suppress(OSError):
                os.unlink(backup)
        raise OSError(exc.errno, exc.strerror, target) from None
    backups[target] = backup


def cmd_dev(args: argparse.Namespace) -> int:
    from ddcustom.tooling.dev import run_dev

    return run_dev(args)


def cmd_plot(args: argparse.Namespace) -> int:
    from ddcustom.tooling.plot import PlotError, plot_history

    profile = load_settings(args.config).security_profile
    try:
        print(plot_history(args.history, args.output, profile, args.metrics, args.thing))
    except PlotError as exc:
        print(f"ddcustom plot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off", "true", "false"):
        raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")
    return value in ("on", "true")


def build_parser(with_boto3: Optional[bool] = None) -> argparse.ArgumentParser:
    """The ``ddcustom`` parser. ``with_boto3``: whether boto3 is installed (None: look); without it, the
    help of ``ddcustom`` and of every ``ddcustom cloud`` command says how to install it. The commands and
    options are the same either way (docs/cli.md is written from ``build_parser(True)``)."""
    parser = argparse.ArgumentParser(
        prog="ddcustom",
        description="Cryptojacking detection for AWS IoT Greengrass v2 GPU edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"ddcustom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the component (under Greengrass when SVCUID is set, else locally)")
    p.add_argument("--config", help="JSON or YAML file with configuration keys (local runs)")
    p.add_argument("--thing", help="thing name for local runs (default: AWS_IOT_THING_NAME or the host name)")
    p.add_argument(
        "--user",
        help="started as root: run as this user, with the privileged reader answering what it may not read "
        "of other users' processes (under Greengrass: the owner of the work folder, the runWith user)",
    )
    p.add_argument(
        "--privileged-reader",
        type=_on_off,
        default=True,
        metavar="on|off",
        help="started as root: fork the privileged reader before dropping to the user (default: on; the "
        "recipe passes PrivilegedReader)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "collect",
        help="collect once and print the Device Defender report (the sources' metrics; the learned "
        "baseline's are the running component's)",
    )
    p.add_argument("--once", action="store_true", required=True, help="collect one report (required)")
    p.add_argument("--config", help="JSON or YAML configuration file")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("check", help="validate a configuration file and its security profile")
    p.add_argument("--config", required=True, help="JSON or YAML configuration file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("simulate", help="write the feedback files for a scenario, atomically")
    p.add_argument("scenario", choices=sorted(SCENARIOS), help="mining: 85 / 180 ms; normal: 20 / 45 ms")
    p.add_argument("--config", help="take the feedback file paths from this configuration file")
    p.add_argument("--load-file", help="GPU load feedback file (default: GpuLoadFeedbackFile)")
    p.add_argument("--time-file", help="inference time feedback file (default: InferenceTimeFeedbackFile)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "dev",
        help="run the component against the stand-in nucleus and show what it publishes; "
        "JSON lines typed on stdin are merged into its configuration",
    )
    p.add_argument(
        "--recipe", default="recipe.yaml", help="recipe whose configuration and access control apply"
    )
    p.add_argument("--thing", default="dev-thing", help="thing name the stand-in nucleus gives the component")
    p.add_argument("--merge", help="merge configuration as JSON, as a deployment would send it")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser(
        "plot", help="draw a recorded history (ddcustom run > FILE): metrics over time, thresholds, alarms"
    )
    p.add_argument("history", help="JSON lines written by ddcustom run")
    p.add_argument("-o", "--output", required=True, help="image to write: .png or .svg")
    p.add_argument("--metrics", help="comma-separated metrics to plot (default: every numeric metric)")
    p.add_argument(
        "--config", help="take the thresholds from this file's SecurityProfile (default: crypto-mining)"
    )
    p.add_argument("--thing", help="plot this thing's lines of a history that holds several things")
    p.set_defaults(func=cmd_plot)

    from ddcustom.cli.baseline import add_baseline_parser

    add_baseline_parser(sub)

    # The cloud's command line imports no boto3 (it is optional on devices): the command is always there.
    from ddcustom.tooling.cloud.cli import add_cloud_parser

    cloud = add_cloud_parser(sub)
    if not (boto3_available() if with_boto3 is None else with_boto3):
        _say_boto3_is_missing(parser, sub, cloud)
    return parser


def _say_boto3_is_missing(parser: argparse.ArgumentParser, sub: Any, cloud: argparse.ArgumentParser) -> None:
    """The help of ``ddcustom``, of ``ddcustom cloud`` and of each of its commands ends with how to
    install boto3; the command list says it is needed."""
    parser.epilog = CLOUD_HELP_WITHOUT_BOTO3
    for choice in sub._choices_actions:  # argparse keeps the command list's entries only there
        if choice.dest == "cloud":
            choice.help = f"{choice.help} (needs boto3, not installed here)"
    for action in cloud._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.epilog = parser.epilog
    cloud.epilog = parser.epilog


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with_boto3 = boto3_available()
    if argv[:1] == ["cloud"] and not with_boto3 and not {"-h", "--help"} & set(argv):
        # before argparse, which would answer `ddcustom cloud` alone with its list of commands only
        from ddcustom.tooling.cloud.cli import NEEDS_BOTO3

        print(NEEDS_BOTO3, file=sys.stderr)
        return EXIT_CONFIG
    args = build_parser(with_boto3).parse_args(argv)
    setup_logging()
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"ddcustom: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130

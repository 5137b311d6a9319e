"""Write docs/cli.md, the command-line reference, from the ``ddcustom`` parser: ``make docs``.

Every command and subcommand gets a section with its usage, its arguments and options (their defaults
and help as the parser declares them) and its subcommands. The parser is built as where boto3 is
installed (``build_parser(True)``): its commands and options do not depend on it, only the help's
advice to install it, so the reference is the same wherever it is written. The text is composed here
rather than taken from argparse's help, whose layout changes with the terminal's width and between
Python versions. A test fails when the committed file differs from what this writes.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from ddcustom.cli.main import build_parser

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

HEADER = """# Command-line reference

<!-- Written by `make docs` (tools/docs_cli.py) from the `ddcustom` parser; a test fails when this file
differs. Change the help in the code, then run `make docs`. -->

Every command, subcommand and option of `ddcustom`, as `ddcustom ... --help` shows it; every command
also takes `-h`/`--help`. `ddcustom` comes with the package ([Installing](../README.md#installing));
`python -m ddcustom` is the same command. `ddcustom cloud` needs boto3 (`pip install '.[cloud]'` in the
repository): where it is missing, every `ddcustom cloud` command and its help say so. `ddcustom plot`
needs matplotlib (`pip install '.[plot]'`). The [README](../README.md#command-line) says what each
command is for.
"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the parser's order."""
    found = []
    for action in parser._actions:  # argparse keeps its arguments and commands only there
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Its arguments and options; -h/--help, which every command has, is said once at the top."""
    return [
        a for a in parser._actions if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction))
    ]


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    parts = [prog]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parts.append("COMMAND ...")
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            parts.append(_metavar(action))
            continue
        option = action.option_strings[0]
        shown = f"{option} {_metavar(action)}" if _takes_value(action) else option
        parts.append(shown if action.required else f"[{shown}]")
    return " ".join(parts)


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion: %(default)s, %% ...
        text = text % {**vars(action), "prog": prog}
    return text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    default = action.default
    if not _takes_value(action) or default is None or isinstance(default, bool) or default == "":
        return ""
    return f"`{default}`"


def _section(prog: str, parser: argparse.ArgumentParser, help_text: str, level: int) -> Iterator[str]:
    yield f"{'#' * level} {prog}"
    yield ""
    description = parser.description or help_text
    if description:
        if parser.formatter_class is argparse.RawDescriptionHelpFormatter:
            head, _, rest = description.partition("\n\n")
            yield _cell(head)
            if rest.strip():
                yield ""
                yield "```text"
                yield from rest.rstrip().splitlines()
                yield "```"
        else:
            yield _cell(description)
        yield ""
    yield "```text"
    yield _usage(prog, parser)
    yield "```"
    yield ""
    arguments = _arguments(parser)
    if arguments:
        yield "| argument | default | meaning |"
        yield "|---|---|---|"
        for action in arguments:
            if action.option_strings:
                value = f" {_metavar(action)}" if _takes_value(action) else ""
                names = ", ".join(f"`{option}{value}`" for option in action.option_strings)
                if action.required:
                    names += " (required)"
            else:
                names = f"`{_metavar(action)}`"
            yield f"| {_cell(names)} | {_default(action)} | {_cell(_help(action, prog))} |"
        yield ""
    commands = _subcommands(parser)
    if commands:
        yield "| command | what it does |"
        yield "|---|---|"
        for name, command_help, _ in commands:
            anchor = f"{prog} {name}".replace(" ", "-")
            yield f"| [`{name}`](#{anchor}) | {_cell(command_help)} |"
        yield ""
        for name, command_help, sub in commands:
            yield from _section(f"{prog} {name}", sub, command_help, min(level + 1, 4))


def reference() -> str:
    """docs/cli.md as the parser declares it."""
    parser = build_parser(with_boto3=True)
    return "\n".join([HEADER, *_section("ddcustom", parser, "", 2)]).rstrip("\n") + "\n"


if __name__ == "__main__":
    REFERENCE.write_text(reference(), encoding="utf-8")

"""docs/cli.md is the reference `make docs` writes from the ``ddcustom`` parser: complete, current, and
the same whether or not boto3 is installed where it is written."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator

from ddcustom.cli.main import build_parser
from support.helpers import ROOT

spec = importlib.util.spec_from_file_location("docs_cli", ROOT / "tools" / "docs_cli.py")
assert spec is not None and spec.loader is not None
docs_cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_cli)

COMMITTED = ROOT / "docs" / "cli.md"


def commands(prog: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command of the parser, itself first, walked independently of the generator."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(f"{prog} {name}", sub)


def test_the_committed_reference_is_the_one_the_parser_declares() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == docs_cli.reference(), "docs/cli.md: run make docs"


def test_every_command_and_option_is_in_the_reference() -> None:
    text = COMMITTED.read_text(encoding="utf-8")
    seen = list(commands("ddcustom", build_parser(with_boto3=True)))
    names = {prog for prog, _ in seen}
    assert {
        "ddcustom run",
        "ddcustom baseline approve",
        "ddcustom cloud setup",
        "ddcustom cloud release",
    } <= names
    for prog, parser in seen:
        heading = text.index(f"# {prog}\n")
        section = text[heading : text.find("\n#", heading + len(prog) + 3)]
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            positional = str(action.metavar or "") or (
                "{" + ",".join(action.choices) + "}"
                if action.choices
                else action.dest  # as argparse shows it
            )
            for option in action.option_strings or [positional]:
                assert f"`{option}".replace("|", "\\|") in section, f"{prog}: {option}"
            if action.help:
                assert " ".join(action.help.replace("%%", "%").split()).replace("|", "\\|") in section


def test_the_reference_does_not_depend_on_boto3() -> None:
    """Written where boto3 cannot be imported (make docs needs only the package), it is the same."""
    code = f"""
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("boto3", "botocore"):
            raise ModuleNotFoundError(name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.path.insert(0, {str(ROOT / "tools")!r})
from ddcustom.cli.main import boto3_available
assert not boto3_available()
import docs_cli
sys.stdout.write(docs_cli.reference())
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == COMMITTED.read_text(encoding="utf-8")

"""Bounded reading of JSON and YAML documents: the configuration, security profiles.

Input is bounded wherever it comes from (a file, a deployment over IPC): JSON data only, at most
MAX_NESTING levels deep, MAX_VALUES values and MAX_DOCUMENT_BYTES characters of text; YAML without
aliases and read as JSON would read it (only ``true``/``false`` are booleans, dates stay strings). Every
value echoed in an error is cut to MAX_SHOWN_CHARS characters.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import yaml

# A configuration is a few KB even with an inline security profile; read no more than this.
MAX_DOCUMENT_BYTES = 1024 * 1024
# The deepest configuration (an inline profile's criteria.value.cidrs) nests 6 levels; Python's json
# and PyYAML recurse per level, so refuse deep documents before they are parsed.
MAX_NESTING = 32
# Every list item, mapping entry and scalar: the defaults have about 60, a 100-behavior profile a few
# thousand. Bounds the time to load and check a document whatever its shape.
MAX_VALUES = 100_000
# A value in an error message is cut to this many characters (the message says how long it was).
MAX_SHOWN_CHARS = 200
# An error lists this many unknown keys (or profile problems), then says how many more there are.
MAX_LISTED = 20
# C0 and C1 control characters and DEL: never part of a process name, a topic or a path.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shown(value: Any) -> str:
    """A value as JSON text for an error message, cut to MAX_SHOWN_CHARS characters."""
    try:
        text = json.dumps(value, default=str)
    except ValueError:  # an int too long for str(), a value that contains itself
        text = f"<{type(value).__name__}>"
    return shorten(text)


def plain_data_problem(value: Any) -> Optional[str]:
    """Why ``value`` is not JSON data within the bounds, or None when it is.

    JSON data: mappings with string keys, lists, strings, numbers, true/false and null. The problem
    names the top-level key it is under. The walk is iterative and stops at the bounds, so a value
    that contains itself ends as too deep.
    """
    pending: list[tuple[Any, int, str]] = [(value, 1, "")]  # (item, its level, top-level key above it)
    count = characters = 0
    while pending:
        item, level, under = pending.pop()
        count += 1
        if isinstance(item, str):
            characters += len(item)
        elif isinstance(item, (dict, list)):
            if level > MAX_NESTING:
                return f"{_under(under)}nested more than {MAX_NESTING} levels deep (or contains itself)"
            if count + len(pending) + len(item) > MAX_VALUES:
                return f"more than {MAX_VALUES} values"
            if isinstance(item, list):
                pending.extend((child, level + 1, under) for child in item)
                continue
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"{_under(under)}mapping key {shown(key)} is not a string"
                characters += len(key)
                pending.append((child, level + 1, under or key))
        elif item is not None and not isinstance(item, (bool, int, float)):
            return f"{_under(under)}{shown(item)} is a {type(item).__name__}, not JSON data"
        if characters > MAX_DOCUMENT_BYTES:
            return f"more than {MAX_DOCUMENT_BYTES} characters of text"
    return None


def _under(key: str) -> str:
    return f"under key {shorten(repr(key))}: " if key else ""


# JSON's brackets and what can hide them: strings, and escaped quotes inside strings.
_JSON_BRACKETS_AND_STRINGS = re.compile(r'[\[\]{}"\\]')


def json_nesting(text: str) -> int:
    """How deep the brackets of JSON ``text`` nest, counted up to MAX_NESTING + 1: a linear scan, where
    ``json.loads`` would recurse once per level."""
    level = deepest = 0
    in_string = False
    escaped_at = -1  # the character after a backslash in a string
    for match in _JSON_BRACKETS_AND_STRINGS.finditer(text):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
            if deepest > MAX_NESTING:
                break
        elif char in "]}":
            level -= 1
    return deepest


def load_json(text: str) -> Any:
    """``json.loads`` for configuration input: ValueError when it does not parse or is out of bounds."""
    if json_nesting(text) > MAX_NESTING:
        raise ValueError(f"nested more than {MAX_NESTING} levels deep")
    data = json.loads(text)
    problem = plain_data_problem(data)
    if problem:
        raise ValueError(problem)
    return data


class _JsonYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML read as JSON would read it (libyaml's parser when installed, about 4 times faster).

    Only ``true``/``false`` are booleans (YAML 1.1 also turns yes/no/on/off into booleans), only numbers
    spelled as JSON spells them are numbers (``017`` is not octal 15 nor ``1:30`` ninety), dates and
    timestamps stay strings, and a tag that is not one of JSON's types (``!!binary``, ``!!set``,
    ``!!timestamp``, ...) is an error.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}
    yaml_constructors: dict[Any, Any] = {
        tag: yaml.constructor.SafeConstructor.yaml_constructors[tag]
        for tag in (
            f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map")
        )
    }
    yaml_constructors[None] = yaml.constructor.SafeConstructor.construct_undefined


for _name, _pattern, _first in (
    ("bool", r"true|false", list("tf")),
    ("int", r"-?(?:0|[1-9][0-9]*)", list("-0123456789")),
    ("float", r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?", list("-0123456789")),
    ("null", r"~|null|Null|NULL|", [*"~nN", ""]),
):
    _JsonYamlLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_name}", re.compile(f"^(?:{_pattern})$"), _first
    )


def _line(event: yaml.Event) -> str:
    return f"line {event.start_mark.line + 1}" if event.start_mark else "YAML"


def load_yaml(text: str) -> Any:
    """YAML for configuration input: aliases, depth and size checked on the event stream first, so an
    alias bomb or deep nesting never reaches the composer (which recurses once per level)."""
    level = count = 0
    for event in yaml.parse(text, Loader=_JsonYamlLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ValueError(
                f"{_line(event)}: YAML aliases (*{shorten(str(event.anchor))}) are not supported; "
                "write the value out"
            )
        if isinstance(event, yaml.NodeEvent):
            count += 1
            if count > MAX_VALUES:
                raise ValueError(f"more than {MAX_VALUES} values")
        if isinstance(event, yaml.CollectionStartEvent):
            level += 1
            if level > MAX_NESTING:
                raise ValueError(f"{_line(event)}: nested more than {MAX_NESTING} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            level -= 1
    data = yaml.load(text, Loader=_JsonYamlLoader)
    problem = plain_data_problem(data)
    if problem:
        raise ValueError(problem)
    return data

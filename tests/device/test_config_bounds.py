"""Configuration input is bounded: whatever a file, an inline profile or a deployment holds, the answer is
valid settings or one ConfigError with a short message; never another exception, a hang or a huge echo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddcustom.cli.main import main
from ddcustom.device.config import SCHEMA, ConfigError, Settings, load_config_file, parse_settings
from ddcustom.device.detect.profile import ProfileError, load_profile
from ddcustom.device.documents import MAX_NESTING, MAX_SHOWN_CHARS, MAX_VALUES
from support.helpers import ROOT

# The billion laughs in 360 bytes: nine levels of ten aliases each, a billion strings once expanded.
ALIAS_BOMB = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{chr(ord('b') + i)}: &{chr(ord('b') + i)} [{','.join(['*' + chr(ord('a') + i)] * 9)}]\n"
    for i in range(8)
)

BEHAVIOR = {
    "name": "load",
    "metric": "gpu_load_per_inference",
    "criteria": {"comparisonOperator": "less-than", "value": {"number": 70}},
}


def written(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def settings_from(path: Path) -> Settings:
    return parse_settings(load_config_file(path))[0]


def nested(levels: int) -> Any:
    """A list inside a list ``levels`` deep, built without recursion."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


# ---- depth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_document_nested_100000_levels_is_a_config_error(tmp_path: Path, suffix: str) -> None:
    path = written(tmp_path, f"deep{suffix}", '{"WatchedProcesses": ' + "[" * 100_000 + "]" * 100_000 + "}")
    # libyaml's scanner looks ahead for keys and stops at its own bound (1000 flow levels) first
    with pytest.raises(ConfigError, match=f"nested more than {MAX_NESTING} levels|maximum nesting depth"):
        load_config_file(path)


def test_block_yaml_nested_past_the_recursion_limit_is_a_config_error(tmp_path: Path) -> None:
    # Indentation nests too: 1 200 levels fit in the 1 MiB bound, past Python's recursion limit.
    text = "".join(" " * level + f"k{level}:\n" for level in range(1200)) + " " * 1200 + "x\n"
    with pytest.raises(ConfigError, match=f"line {MAX_NESTING + 1}: nested more than {MAX_NESTING} levels"):
        load_config_file(written(tmp_path, "deep.yaml", text))


def test_json_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    name = '[[[{{{"\\' * 20  # in the JSON text: brackets, an escaped quote, an escaped backslash
    path = written(tmp_path, "c.json", json.dumps({"WatchedProcesses": [name], "LogLevel": "DEBUG"}))
    assert settings_from(path).watched_processes == (name,)


def test_nesting_up_to_the_bound_is_accepted(tmp_path: Path) -> None:
    # A configuration is a level, the list a second: the unknown key's value fills the rest.
    deepest = {"Unknown": nested(MAX_NESTING - 1)}
    assert isinstance(load_config_file(written(tmp_path, "c.json", json.dumps(deepest))), dict)
    with pytest.raises(ConfigError, match="nested"):
        load_config_file(written(tmp_path, "d.json", json.dumps({"Unknown": nested(MAX_NESTING)})))


def test_an_inline_profile_nested_100000_levels_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"'SecurityProfile'.*nested more than {MAX_NESTING} levels"):
        parse_settings({"SecurityProfile": "[" * 100_000 + "]" * 100_000})


def test_a_profile_file_nested_100000_levels_is_a_profile_error(tmp_path: Path) -> None:
    path = written(tmp_path, "deep.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProfileError, match="nested"):
        load_profile(str(path))


def test_a_deep_mapping_handed_over_directly_is_a_config_error() -> None:
    # As a deployment hands it over IPC: already parsed, as deep as the sender likes.
    with pytest.raises(ConfigError, match="under key 'WatchedProcesses': nested more than"):
        parse_settings({"WatchedProcesses": nested(100_000)})


def test_a_value_that_contains_itself_is_a_config_error() -> None:
    loop: dict[str, Any] = {"name": "x"}
    loop["behaviors"] = [loop]
    with pytest.raises(ConfigError, match="contains itself"):
        parse_settings({"SecurityProfile": loop})
    with pytest.raises(ProfileError, match="contains itself"):
        load_profile(loop)


def test_too_many_values_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"more than {MAX_VALUES} values"):
        parse_settings({"MiningPoolPorts": [3333] * MAX_VALUES})


def test_too_much_text_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="characters of text"):
        parse_settings({"WatchedProcesses": ["x" * 600_000, "y" * 600_000]})


# ---- YAML read as JSON would read it ---------------------------------------------------------------


def test_the_360_byte_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 400
    with pytest.raises(ConfigError, match=r"line 2: YAML aliases \(\*a\) are not supported"):
        load_config_file(written(tmp_path, "bomb.yaml", ALIAS_BOMB))


def test_an_alias_that_refers_to_its_own_node_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="aliases"):
        load_config_file(written(tmp_path, "loop.yaml", "SecurityProfile: &p {behaviors: [*p]}\n"))


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "True", "FALSE"])
def test_yaml_1_1_booleans_are_refused_naming_the_word(tmp_path: Path, word: str) -> None:
    path = written(tmp_path, "c.yaml", f"EnableGPUMetrics: {word}\n")
    with pytest.raises(ConfigError) as exc:
        settings_from(path)
    assert f"'EnableGPUMetrics': \"{word}\" is not allowed" in str(exc.value)
    assert "yes/no/on/off" in str(exc.value)


def test_yaml_true_and_false_are_booleans(tmp_path: Path) -> None:
    path = written(tmp_path, "c.yaml", "EnableGPUMetrics: true\nUseShortNames: false\n")
    assert settings_from(path).enable_gpu_metrics is True


def test_yaml_words_that_1_1_reads_as_booleans_stay_names(tmp_path: Path) -> None:
    path = written(tmp_path, "c.yaml", "WatchedProcesses: [yes, on, y]\n")
    assert settings_from(path).watched_processes == ("yes", "on", "y")


def test_yaml_dates_stay_strings(tmp_path: Path) -> None:
    path = written(
        tmp_path, "c.yaml", "LocalAlertTopic: 2024-01-01\nWatchedProcesses: [2001-12-14t21:59:43.10-05:00]\n"
    )
    loaded = settings_from(path)
    assert loaded.local_alert_topic == "2024-01-01"
    assert loaded.watched_processes == ("2001-12-14t21:59:43.10-05:00",)


@pytest.mark.parametrize(
    "text, number",
    [("017", "017"), ("0x1F", "0x1F"), ("1:30", "1:30"), ("1_000", "1_000"), (".inf", ".inf"), ("+5", "+5")],
)
def test_yaml_1_1_number_forms_stay_strings(tmp_path: Path, text: str, number: str) -> None:
    # 017 would be octal 15 and 1:30 ninety; here they are strings the number parser reads or refuses.
    raw = load_config_file(written(tmp_path, "c.yaml", f"SampleIntervalSeconds: {text}\n"))
    assert raw == {"SampleIntervalSeconds": number}


def test_yaml_plain_numbers_and_null_are_json_values(tmp_path: Path) -> None:
    text = "a: 12\nb: -3.5\nc: 1e3\nd: null\ne: ~\nf:\ng: '12'\n"
    assert load_config_file(written(tmp_path, "c.yaml", text)) == {
        "a": 12, "b": -3.5, "c": 1000.0, "d": None, "e": None, "f": None, "g": "12",
    }  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "a: !!binary aGVsbG8=\n",
        "a: !!set {x, y}\n",
        "a: !!timestamp 2024-01-01\n",
        "a: !!omap [x: 1]\n",
        "a: !!python/name:os.system\n",
        "a: !custom 1\n",
    ],
)
def test_yaml_types_json_has_not_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="does not parse"):
        load_config_file(written(tmp_path, "c.yaml", text))


def test_yaml_keys_that_are_not_strings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping key 1 is not a string"):
        load_config_file(written(tmp_path, "c.yaml", "SecurityProfile: {1: x}\n"))


def test_the_recipe_reads_as_before() -> None:
    # The recipe goes through the same loader (build, stand-in nucleus): nothing in it changes meaning.
    recipe = ROOT / "recipe.yaml"
    assert load_config_file(recipe, what="recipe") == yaml.safe_load(recipe.read_text(encoding="utf-8"))


# ---- what is echoed --------------------------------------------------------------------------------


def test_a_huge_value_is_echoed_cut_with_its_length() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"LogLevel": "x" * 1_000_000})
    message = str(exc.value)
    assert len(message) < 500
    assert '"xxxx' in message and "... (1000002 characters)" in message


def test_an_integer_too_long_to_print_is_a_config_error(tmp_path: Path) -> None:
    # Python refuses to turn an int of more than 4300 digits into text, json.dumps included
    with pytest.raises(ConfigError, match="'MaxReportListSize': <int> is not allowed"):
        parse_settings({"MaxReportListSize": 10**5000})
    with pytest.raises(ConfigError, match="does not parse"):
        load_config_file(written(tmp_path, "c.yaml", "MaxReportListSize: 1" + "0" * 5000 + "\n"))


def test_huge_values_in_a_profile_are_echoed_cut() -> None:
    behavior = {
        **BEHAVIOR,
        "criteria": {"comparisonOperator": "less-than", "value": {"number": "9" * 500_000}},
    }
    with pytest.raises(ConfigError) as exc:
        parse_settings({"SecurityProfile": {"behaviors": [behavior]}})
    assert len(str(exc.value)) < 1000
    assert "(500002 characters)" in str(exc.value)


def test_many_bad_behaviors_are_listed_up_to_a_bound() -> None:
    behaviors = [{**BEHAVIOR, "name": f"b{i}", "metric": "nope"} for i in range(90)]
    with pytest.raises(ConfigError) as exc:
        parse_settings({"SecurityProfile": {"behaviors": behaviors}})
    assert "behavior 'b0': unknown metric" in str(exc.value)
    assert "and 70 more problems" in str(exc.value)


def test_many_unknown_keys_are_listed_up_to_a_bound() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({f"Key{i:05}": "v" * 1000 for i in range(1000)})
    message = str(exc.value)
    assert "'Key00000'" in message and "'Key00019'" in message and "'Key00020'" not in message
    assert "and 980 more" in message
    assert len(message) < 20 * (MAX_SHOWN_CHARS + 100) + 1000


def test_check_prints_a_bounded_message_for_a_huge_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = written(tmp_path, "c.yaml", "AlertTopic: '#" + "x" * 900_000 + "'\n")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'AlertTopic'" in err and "(900003 characters)" in err
    assert len(err) < 1000


# ---- control characters ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["xm\x00rig", "xm\nrig", "a\tb", "del\x7f", "c1\x9bx"])
@pytest.mark.parametrize("key", ["WatchedProcesses", "AllowedGpuProcesses", "MinerProcessNames"])
def test_control_characters_in_process_names_are_refused(key: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'.*without control characters"):
        parse_settings({key: ["myapp", bad]})


@pytest.mark.parametrize(
    "key",
    ["AlertTopic", "LocalAlertTopic", "GpuLoadFeedbackFile", "InferenceTimeFeedbackFile",
     "GpuBusyOutsideFeedbackFile", "StateDirectory"],
)  # fmt: skip
@pytest.mark.parametrize("bad", ["a\x00b", "a\nb", "a\x1bb"])
def test_control_characters_in_topics_and_paths_are_refused(key: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'.*without control characters"):
        parse_settings({key: bad})


def test_a_profile_path_with_a_nul_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="control characters"):
        parse_settings({"SecurityProfile": "/etc/\x00profile.json"})


def test_surrounding_whitespace_is_still_stripped() -> None:
    # a YAML block scalar ends in a newline; that is not part of the name
    loaded = parse_settings({"WatchedProcesses": ["myapp\n"], "AlertTopic": " a/b\n"})[0]
    assert loaded.watched_processes == ("myapp",) and loaded.alert_topic == "a/b"


# ---- any document: settings or a ConfigError -----------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["true", "True", "yes", "crypto-mining", "INFO", "300", "a/b", "3333", "xmrig"]),
)
# What YAML and Python callers can hold beyond JSON
OTHER_SCALARS = st.one_of(st.dates(), st.datetimes(), st.binary(max_size=4))
KEYS = st.one_of(st.sampled_from([*SCHEMA, "accessControl"]), st.text(max_size=12))
LEVELS = st.integers(min_value=1, max_value=5000)  # past Python's recursion limit, too


def configurations(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings of known and unknown keys, profile-shaped values, one value under two keys (YAML
    writes it with an anchor and an alias)."""
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
        ),
        max_leaves=30,
    )
    behavior = st.fixed_dictionaries({}, optional={"name": values, "metric": values, "criteria": values})
    profile = st.fixed_dictionaries({"behaviors": st.lists(behavior, max_size=4)}, optional={"name": values})
    return st.one_of(
        st.dictionaries(KEYS, values, max_size=8),
        st.builds(lambda p: {"SecurityProfile": p}, profile),
        st.builds(lambda k1, k2, v: {k1: v, k2: v}, KEYS, KEYS, st.lists(values, min_size=1, max_size=3)),
    )


def containing_itself(key: str, value: Any) -> dict[str, Any]:
    loop: dict[str, Any] = {"name": value}
    loop["behaviors"] = [loop]
    return {key: loop}


DEEP_TEXT = st.builds(
    lambda key, levels: f"{{{json.dumps(key)}: {'[' * levels}{']' * levels}}}", KEYS, LEVELS
)
BLOCK_YAML = st.integers(min_value=1, max_value=1300).map(
    lambda levels: "".join(" " * level + f"k{level}:\n" for level in range(levels)) + " " * levels + "x\n"
)
# tmp_path is one folder for all examples of a test: each example rewrites the same file.
FAST = settings(
    deadline=2000,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def settings_or_config_error(load: Any) -> None:
    try:
        loaded, warnings = parse_settings(load())
    except ConfigError as exc:
        assert 0 < len(str(exc)) < 50_000
        return
    assert isinstance(loaded, Settings) and isinstance(warnings, list)


@FAST
@given(
    st.one_of(
        configurations(st.one_of(JSON_SCALARS, OTHER_SCALARS, st.frozensets(st.integers(), max_size=2))),
        st.builds(lambda key, levels: {key: nested(levels)}, KEYS, LEVELS),
        st.builds(containing_itself, KEYS, JSON_SCALARS),
    )
)
def test_any_mapping_gives_settings_or_a_config_error(raw: dict[str, Any]) -> None:
    settings_or_config_error(lambda: raw)


@FAST
@given(st.one_of(configurations(JSON_SCALARS).map(json.dumps), DEEP_TEXT))
def test_any_json_document_gives_settings_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = written(tmp_path, "c.json", text)
    settings_or_config_error(lambda: load_config_file(path))
    settings_or_config_error(lambda: {"SecurityProfile": text})  # as an inline profile


@FAST
@given(
    st.one_of(
        st.builds(
            lambda raw, flow: yaml.safe_dump(raw, default_flow_style=flow, allow_unicode=True),
            configurations(st.one_of(JSON_SCALARS, OTHER_SCALARS)),
            st.sampled_from([None, True, False]),
        ),
        DEEP_TEXT,
        BLOCK_YAML,
    )
)
def test_any_yaml_document_gives_settings_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = written(tmp_path, "c.yaml", text)
    settings_or_config_error(lambda: load_config_file(path))


YAML_PIECES = st.sampled_from(
    ["a", ":", " ", "\n", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "!!", "'", '"', "#", "yes",
     "2024-01-01", "? ", "<<", "|", ">", "---", "...", "%YAML 1.1\n", "\t", "1.5", "0x1", "~", "\\",
     "EnableGPUMetrics"]
)  # fmt: skip


@FAST
@given(st.lists(st.one_of(YAML_PIECES, st.text(max_size=5)), max_size=60).map("".join))
def test_any_yaml_text_gives_settings_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = written(tmp_path, "c.yaml", text)
    settings_or_config_error(lambda: load_config_file(path))


JSON_PIECES = st.sampled_from(
    ["{", "}", "[", "]", '"', "\\", ",", ":", "1", "true", "null", '"a"', " ", "NaN"]
)


@FAST
@given(st.lists(st.one_of(JSON_PIECES, st.text(max_size=3)), max_size=60).map("".join))
def test_any_json_text_gives_settings_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = written(tmp_path, "c.json", text)
    settings_or_config_error(lambda: load_config_file(path))
    # and as an inline profile
    settings_or_config_error(lambda: {"SecurityProfile": "[" + text})

"""Redaction of the evidence's free text: the table of real-world command lines (what is cut, what is
kept), the marks, the rules' edges, and the operator's patterns with their safety rule."""

from __future__ import annotations

import re

import pytest

from ddcustom.device.alerts.redact import (
    KINDS,
    MAX_FIELD_CHARS,
    MAX_GROUP_REPEAT,
    MAX_PATTERN_CHARS,
    MAX_PATTERN_STEPS,
    MAX_PATTERNS,
    PROGRAM_OPTIONS,
    REDACTED,
    SECRET_LAST_WORDS,
    SECRET_SUBSTRINGS,
    Redactor,
    UnsafePattern,
    check_pattern,
    high_entropy,
    secret_name,
    wallet_shaped,
    worst_case_steps,
)
from ddcustom.device.sources.processes import MINER_FLAG, STRATUM_URL
from support.helpers import ROOT
from support.redaction_table import EXTRA_PATTERN, MONERO_WALLET, ROWS, Row

REDACTOR = Redactor([EXTRA_PATTERN])


def is_miner(cmdline: str) -> bool:
    """What the miner rule counts by the command line (its names too, but none of the table's rows
    needs them)."""
    return bool(STRATUM_URL.search(cmdline) or MINER_FLAG.search(cmdline))


@pytest.mark.parametrize("row", ROWS, ids=[row.cmdline[:40] for row in ROWS])
def test_the_table_of_real_command_lines(row: Row) -> None:
    redacted = REDACTOR.redact(row.cmdline, is_miner(row.cmdline))
    for secret in row.cut:
        assert secret not in redacted.text
    for kept in row.kept:
        assert kept in redacted.text
    assert redacted.kinds == row.kinds
    assert (REDACTED in redacted.text) == bool(row.cut)
    if not row.cut:
        assert redacted.text == row.cmdline


def test_every_kind_is_in_the_table() -> None:
    assert {kind for row in ROWS for kind in row.kinds} == set(KINDS)


def test_what_is_cut_is_only_the_value() -> None:
    assert (
        Redactor().redact("app --password=hunter2 --user=me").text == f"app --password={REDACTED} --user=me"
    )
    assert Redactor().redact("app --token hunter2 --verbose").text == f"app --token {REDACTED} --verbose"
    assert Redactor().redact("DB_PASS=a DB_HOST=b").text == f"DB_PASS={REDACTED} DB_HOST=b"


def test_a_value_that_is_an_option_is_not_taken_for_the_secret() -> None:
    # --password without a value (a prompt), then the next option: nothing to cut
    assert Redactor().redact("app --password --user me").text == "app --password --user me"


def test_a_reference_to_a_secret_is_not_the_secret() -> None:
    assert Redactor().redact("sh -c PGPASSWORD=$DB_PASS psql").text == "sh -c PGPASSWORD=$DB_PASS psql"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("keyStorePassword", True),
        ("client-secret", True),
        ("X-Auth-Token", True),
        ("apiKey", True),
        ("api-key", True),
        ("MYSQL_PWD", True),
        ("pass", True),
        ("AccountKey", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("password-file", False),  # the value is a path
        ("key-id", False),
        ("token-url", False),
        ("no-password", False),  # a flag
        ("password-stdin", False),
        ("PasswordAuthentication", False),  # sshd's: yes or no
        ("StrictHostKeyChecking", False),
        ("PWD", False),  # the shell's working directory
        ("keyboard", False),
        ("author", False),
        ("user", False),
    ],
)
def test_names_that_mean_a_secret(name: str, secret: bool) -> None:
    assert secret_name(name) is secret


def test_high_entropy_takes_random_strings_not_paths_digests_or_words() -> None:
    assert high_entropy("7Hq2Lm9XcV4bN8kP3sR6tY1wZ5aD0fGj")
    assert not high_entropy("0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31")  # hex
    assert not high_entropy("/opt/NVIDIA/Nsight2023/Bin/Target2024Linux64")  # an absolute path
    assert not high_entropy("src/Components/HeaderNavigation2Component")  # a relative one
    assert not high_entropy("7Hq2Lm9XcV4bN8kP3sR6tY1wZ")  # too short
    assert not high_entropy("abcdefghijklmnopqrstuvwxyzabcdefgh")  # one case, no digit


def test_a_token_in_a_url_user_part_is_cut() -> None:
    redacted = Redactor().redact("git fetch https://7Hq2Lm9XcV4bN8kP3sR6tY1wZ5aD0fGj@git.example.com/r")
    assert redacted.text == f"git fetch https://{REDACTED}@git.example.com/r"
    assert redacted.kinds == ("token",)


def test_wallets_are_public_and_kept() -> None:
    assert wallet_shaped(MONERO_WALLET, miner=False)
    assert not wallet_shaped("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", miner=False)
    assert wallet_shaped("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", miner=True)
    assert Redactor().redact(f"payout --to {MONERO_WALLET}").text == f"payout --to {MONERO_WALLET}"


def test_a_pool_login_outside_a_miner_is_a_password() -> None:
    assert Redactor().redact("app --pass=rig7", miner=False).text == f"app --pass={REDACTED}"
    assert Redactor().redact("app --pass=rig7", miner=True).text == "app --pass=rig7"


def test_a_programs_own_options_count_only_for_it() -> None:
    assert Redactor().redact("psql -p 5433 db").text == "psql -p 5433 db"  # psql's -p is the port
    assert Redactor().redact("docker run -p 80:80 x").text == "docker run -p 80:80 x"  # a port
    assert Redactor().redact("sh -c mongosh -p pw db").text == f"sh -c mongosh -p {REDACTED} db"  # in sh -c


def test_digest_credentials_and_cookies_are_cut_to_the_end_of_the_header() -> None:
    redacted = Redactor().redact("curl -H Cookie: sid=abc; csrf=def -H Accept: */* https://x")
    assert redacted.text == f"curl -H Cookie: {REDACTED} {REDACTED} -H Accept: */* https://x"


def test_the_operators_pattern_with_a_group_cuts_the_group_only() -> None:
    redactor = Redactor([r"--tenant-ref=(\w+)"])
    redacted = redactor.redact("app --tenant-ref=acme42 --verbose")
    assert redacted.text == f"app --tenant-ref={REDACTED} --verbose"
    assert redacted.kinds == ("pattern",)


def test_nothing_to_cut_leaves_the_text_as_it_is() -> None:
    assert Redactor().redact("") == Redactor().redact("").__class__("", ())
    text = "/usr/bin/python3 /opt/app/serve.py --port 8080"
    assert Redactor().redact(text).text == text


# ---- the operator's patterns: checked when the configuration is read -------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?i)--db-uri=\S+",
        r"corp-[A-Za-z0-9]{32}",
        r"(?i)x-internal-key:\s{0,8}(\S+)",
        r"(?:license|serial)[=: ]([A-Z0-9-]{8,40})",
        r"(?:ab){2,4}c",
    ],
)
def test_safe_patterns_are_accepted(pattern: str) -> None:
    assert check_pattern(pattern).pattern == pattern
    assert worst_case_steps(pattern) <= MAX_PATTERN_STEPS


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("(unclosed", "not a regular expression"),
        (r"(a+)+b", "may repeat at most"),  # nested repetition: exponential
        (r"(a|ab)*c", "may repeat at most"),  # a repeated alternation: exponential
        (r"(\w)\1", "backreferences"),
        (r"\s*(\S+)", "worst case"),  # two unbounded repetitions: cubic on a field
        (r"a*a*a*b", "worst case"),
        (r"x?", "empty string"),  # would put [redacted] between every two characters
        ("a" * (MAX_PATTERN_CHARS + 1), "at most"),
        ("", "non-empty"),
    ],
)
def test_unsafe_patterns_are_refused_saying_why(pattern: str, why: str) -> None:
    with pytest.raises(UnsafePattern, match=re.escape(why)):
        check_pattern(pattern)


def test_the_estimate_bounds_a_search_on_a_whole_field() -> None:
    # one unbounded repetition: each starting position, times each length it may take
    assert worst_case_steps(r"k=\S+") == MAX_FIELD_CHARS * (MAX_FIELD_CHARS - 1 + 1)
    # alternatives add up
    assert worst_case_steps(r"(?:ab|cd|ef)") == MAX_FIELD_CHARS * 3


def test_the_threat_model_describes_the_rules_the_code_has() -> None:
    """docs/threat-model.md's redaction section (marked "keep in step with the code") names every kind,
    every program with options of its own, and the bounds on the operator's patterns."""
    text = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    assert "<!-- redaction: keep in step with the code -->" in text
    section = text[text.index("### Redaction") :]
    for kind in KINDS:
        assert f"| `{kind}` |" in section
    for program in PROGRAM_OPTIONS:
        assert f"`{program}`" in section, program
    for word in sorted(SECRET_LAST_WORDS):
        assert f"`{word}`" in section, word
    for word in SECRET_SUBSTRINGS:
        assert f"`{word}`" in section, word
    assert (
        f"at most {MAX_PATTERN_CHARS} characters" in section and f"at most {MAX_PATTERNS} patterns" in section
    )
    assert (
        f"{MAX_GROUP_REPEAT} times" in section
        and f"{MAX_PATTERN_STEPS // 1_000_000} million steps" in section
    )

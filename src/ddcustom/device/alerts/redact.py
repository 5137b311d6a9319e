"""Redaction: what an alert's evidence must not carry off the device.

A command line routinely holds secrets (``--password=...``, ``mysql -pSECRET``, ``https://user:token@host``,
``AWS_SECRET_ACCESS_KEY=...``); the evidence goes to IoT Core and from there to every e-mail subscriber
of the alerts topic. Every free-text field of the evidence passes through ``Redactor.redact`` once,
where the evidence is made (evidence.py). What is cut is replaced by ``[redacted]``, and the evidence
says which kinds of thing were cut (``KINDS``). The rules, in the order they apply
(docs/threat-model.md, "Redaction", shows each with examples and says what is kept and why):

- ``secret-option``: the value of an option whose name means a secret (``secret_name``), given as
  ``--name=value``, ``--name value`` or ``-name value``; a program's own short options for a password
  (``PROGRAM_OPTIONS``: ``mysql -pSECRET``, ``sshpass -p``, ``redis-cli -a``, ``curl -u user:PASSWORD``,
  ``docker login -p``...); a bare keyword such as ``password`` or ``aws_secret_access_key`` and the word
  after it (``aws configure set aws_secret_access_key VALUE``, ``nmcli ... password VALUE``);
- ``secret-assignment``: ``NAME=value`` where NAME means a secret, wherever it stands (environment
  variables, ``-Dkey.password=...``, URL query parameters, ``--set db.password=...``), and JSON's
  ``"password": "value"``;
- ``url-password``: the password of a URL's user information (``scheme://user:PASSWORD@host``);
- ``auth-header``: the credentials of an ``Authorization``, ``Proxy-Authorization``, ``Cookie`` or
  API-key header (``-H "Authorization: Bearer TOKEN"``), the scheme word kept;
- ``token``: tokens of a well-known format (GitHub, GitLab, Slack, Hugging Face, npm, OpenAI, Google
  API keys, JSON Web Tokens) and long high-entropy strings (``high_entropy``);
- ``pattern``: what the configuration's ``EvidenceRedactPatterns`` match, after the rules above.

In a miner's command line (a process the miner rule counts: a known miner name, a stratum URL or
``--donate-level``) the pool login is evidence, not the device owner's secret: the values of ``-p``,
``--pass``, ``--password`` and ``-O``/``--userpass``, a stratum URL's user information, and wallet
addresses (``wallet_shaped``) are kept. A stratum URL's user information is kept everywhere.

The operator's patterns are checked when the configuration is read (``check_pattern``): they must
compile, be at most ``MAX_PATTERN_CHARS`` long, and be safe to run on text an attacker wrote: no
backreference, a repetition of more than one character bounded by ``MAX_GROUP_REPEAT``, and an
estimated worst case on a ``MAX_FIELD_CHARS`` field within ``MAX_PATTERN_STEPS`` steps of the regular
expression engine (``worst_case_steps``). No time limit is set at run time: the rule bounds the work.

The rules are linear in the text: every built-in expression here is a single pass without nested
repetition.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

REDACTED = "[redacted]"

SECRET_OPTION = "secret-option"
SECRET_ASSIGNMENT = "secret-assignment"
URL_PASSWORD = "url-password"
AUTH_HEADER = "auth-header"
TOKEN = "token"
PATTERN = "pattern"
KINDS = (SECRET_OPTION, SECRET_ASSIGNMENT, URL_PASSWORD, AUTH_HEADER, TOKEN, PATTERN)

# The evidence's free text is at most this long when the operator's patterns run on it (evidence.py cuts
# a command line to it first): the bound that the patterns' worst case is estimated on.
MAX_FIELD_CHARS = 512
MAX_PATTERNS = 16
MAX_PATTERN_CHARS = 200
MAX_GROUP_REPEAT = 16  # a group (more than one character) may repeat at most this often
MAX_PATTERN_STEPS = 10_000_000  # the estimated worst case of one pattern on one field

# ---- names that mean a secret -----------------------------------------------------------------------

# A name holding one of these (case and separators ignored) means a secret: DB_PASSWORD, keyStorePassword,
# --client-secret, X-Auth-Token, apiKey, --private-key, GOOGLE_APPLICATION_CREDENTIALS...
SECRET_SUBSTRINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "credential",
    "privatekey",
    "accesskey",
)
# A name ending in one of these words means a secret: --pass, MYSQL_PWD, --key, ACCOUNT_KEY, --auth,
# X-Amz-Signature, -storepass... (as a word inside a name they say less: StrictHostKeyChecking).
SECRET_LAST_WORDS = frozenset(
    {
        "pass", "pwd", "pw", "key", "keys", "auth", "oauth", "bearer", "creds", "cookie", "cookies",
        "signature", "sig", "storepass", "keypass", "srcstorepass", "deststorepass", "srckeypass",
        "destkeypass", "passin", "passout", "pgpass", "requirepass", "masterauth", "sas",
    }
)  # fmt: skip
# ... unless its last word says the value is about the secret, not the secret: --password-file PATH,
# --token-url, --key-id, --secret-name, --auth-type, --key-size, --password-stdin (a flag),
# PasswordAuthentication=no.
NOT_SECRET_LAST_WORDS = frozenset(
    {
        "file", "path", "dir", "directory", "stdin", "prompt", "env", "id", "ids", "name", "names",
        "type", "length", "len", "size", "bits", "url", "uri", "endpoint", "host", "port", "user",
        "username", "cmd", "command", "helper", "store", "policy", "mode", "format", "alg",
        "algorithm", "expiry", "expires", "ttl", "lifetime", "duration", "scope", "scopes", "count",
        "limit", "header", "region", "arn", "version", "source", "provider", "method", "kind",
        "authentication", "enabled", "disabled", "required", "reset", "change",
    }
)  # fmt: skip
# Shell variables whose names hold a secret word but whose values are paths.
NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})

_WORD_BOUNDARY = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def name_words(name: str) -> list[str]:
    """``keyStorePassword`` -> ``key store password``; ``DB_PASS`` -> ``db pass``; lower case."""
    return [w.lower() for w in _WORD_BOUNDARY.split(name) if w]


def secret_name(name: str) -> bool:
    """Whether an option, variable or parameter called ``name`` holds a secret: its last word is one of
    SECRET_LAST_WORDS, or it holds one of SECRET_SUBSTRINGS, and its last word is not one of
    NOT_SECRET_LAST_WORDS (nor its first ``no``: ``--no-password`` is a flag)."""
    words = name_words(name)
    if not words or name in NOT_SECRET_NAMES or words[0] == "no" or words[-1] in NOT_SECRET_LAST_WORDS:
        return False
    joined = "".join(words)
    return words[-1] in SECRET_LAST_WORDS or any(s in joined for s in SECRET_SUBSTRINGS)


# ---- programs' own conventions ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramOptions:
    """A program's short options that take a password: ``separate`` as ``-p VALUE`` or ``-pVALUE``,
    ``attached`` only as ``-pVALUE`` (mysql's ``-p VALUE`` prompts, VALUE is the database), ``split``
    as ``-u USER:PASSWORD`` (the character after which the password starts). ``after`` the word
    (``login``) when only that command takes it: ``docker run -p`` publishes a port."""

    separate: frozenset[str] = frozenset()
    attached: frozenset[str] = frozenset()
    split: tuple[tuple[str, str], ...] = ()
    after: str = ""
    command_follows: bool = False  # its first argument is the command it runs (sshpass ... ssh -p 22)
    description: str = ""


def _programs(names: str, options: ProgramOptions) -> dict[str, ProgramOptions]:
    return dict.fromkeys(names.split(), options)


PROGRAM_OPTIONS: dict[str, ProgramOptions] = {
    **_programs(
        "mysql mysqldump mysqladmin mysqlimport mysqlshow mysqlcheck mysqlpump mysqlslap mariadb "
        "mariadb-dump mariadb-admin mariadb-import mariadb-check mariadb-show",
        ProgramOptions(attached=frozenset("p"), description="`-pSECRET` (`-p` alone prompts)"),
    ),
    "sshpass": ProgramOptions(separate=frozenset("p"), command_follows=True, description="`-p SECRET`"),
    **_programs(
        "mongo mongosh mongodump mongorestore mongoexport mongoimport mongofiles mongostat mongotop",
        ProgramOptions(separate=frozenset("p"), description="`-p SECRET`"),
    ),
    **_programs(
        "redis-cli valkey-cli keydb-cli", ProgramOptions(separate=frozenset("a"), description="`-a SECRET`")
    ),
    **_programs(
        "mosquitto_pub mosquitto_sub mosquitto_rr sqlcmd bcp osql zip unzip zipcloak",
        ProgramOptions(separate=frozenset("P"), description="`-P SECRET`"),
    ),
    **_programs("7z 7za 7zr 7zz", ProgramOptions(attached=frozenset("p"), description="`-pSECRET`")),
    **_programs(
        "ldapsearch ldapmodify ldapadd ldapdelete ldapwhoami ldappasswd ldapcompare ldapmodrdn ldapexop",
        ProgramOptions(separate=frozenset("w"), description="`-w SECRET`"),
    ),
    "ssh-keygen": ProgramOptions(separate=frozenset("NP"), description="`-N SECRET`, `-P SECRET`"),
    "openssl": ProgramOptions(
        separate=frozenset({"k", "K", "passin", "passout", "pass"}),
        description="`-k SECRET`, `-K KEY`, `-passin ARG`, `-passout ARG`, `-pass ARG`",
    ),
    **_programs(
        "curl",
        ProgramOptions(split=(("u", ":"), ("U", ":")), description="`-u USER:SECRET`, `-U USER:SECRET`"),
    ),
    **_programs("http https", ProgramOptions(split=(("a", ":"),), description="`-a USER:SECRET` (HTTPie)")),
    "lftp": ProgramOptions(split=(("u", ","),), description="`-u USER,SECRET`"),
    **_programs("smbclient rpcclient", ProgramOptions(split=(("U", "%"),), description="`-U USER%SECRET`")),
    **_programs(
        "docker podman nerdctl buildah skopeo helm oras crane regctl",
        ProgramOptions(separate=frozenset("p"), after="login", description="`login -p SECRET`"),
    ),
    "az": ProgramOptions(separate=frozenset("p"), after="login", description="`login -p SECRET`"),
}
# A bare word that says the next word is a secret: ``nmcli ... password SECRET``, ``aws configure set
# aws_secret_access_key SECRET`` (any identifier with an underscore that ``secret_name`` takes).
BARE_KEYWORDS = frozenset({"password", "passwd", "passphrase", "requirepass", "masterauth"})
# In a miner's command line these options are the pool login: evidence, kept.
MINER_LOGIN_OPTIONS = frozenset({"p", "pass", "password", "O", "userpass"})
# Long options with one dash (Java's, openssl's, keytool's): -password VALUE, -storepass VALUE.
_LONG_OPTION = re.compile(r"(--?)([A-Za-z][\w.]*(?:-[\w.]+)*)(?:=(.*))?", re.DOTALL)
_SHORT_OPTION = re.compile(r"-([A-Za-z0-9])(.*)", re.DOTALL)

# ---- headers, URLs, assignments, tokens -------------------------------------------------------------

SECRET_HEADERS = re.compile(
    r"(?i)(?:proxy-)?authorization|cookie|set-cookie|x-[\w-]*(?:token|key|secret|auth|password)[\w-]*|"
    r"[\w-]*api-?key"
)
AUTH_SCHEMES = frozenset(
    {"basic", "bearer", "digest", "token", "negotiate", "ntlm", "aws4-hmac-sha256", "sso-key"}
)
_HEADER = re.compile(r"(?:^|[=\"'])(?P<name>[A-Za-z][\w-]*):(?P<value>.*)", re.DOTALL)

STRATUM = re.compile(r"(?i)stratum2?\+(?:tcp|ssl|tls)$|stratum$")
_URL_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<user>[^\s/@:]*):(?P<password>[^\s/@]*)@"
)
# NAME=value (NAME after the start, a space, ?, &, ;, a comma, a quote, a brace, or -D / -- / -), and JSON's
# "NAME": "value"
_ASSIGNMENT = re.compile(
    r"(?:^|(?<=[\s?&;,\"'{(=]))(?:-D|(?P<dashes>--?))?(?P<name>[A-Za-z_][\w.\-\[\]]*)="
    r"|\"(?P<jname>[A-Za-z_][\w.\-]*)\"\s?:\s?\"(?P<jvalue>[^\"]*)\""
)
_VALUE = re.compile(r"[^\s&;,]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")
_REFERENCE = re.compile(r"\$\{?\w+\}?")  # $VAR, ${VAR}: a reference to a secret, not the secret

KNOWN_TOKENS = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,}|glpat-[\w-]{20,}|xox[abposr]-[\w-]{10,}"
    r"|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{30,}|sk-[\w-]{20,}|AIza[\w-]{35}"
    r"|eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*)"
)
# Runs of base64's alphabet; "//" before one is a URL's authority (https://TOKEN@host), a single "/" a path.
_TOKEN_RUN = re.compile(r"(?<![A-Za-z0-9+/])(?://)?(?P<run>[A-Za-z0-9+/]{32,}={0,2})")
_HEX = re.compile(r"(?:0x)?[0-9a-fA-F]+")
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")
MONERO = re.compile(r"[48][1-9A-HJ-NP-Za-km-z]{94}(?:[1-9A-HJ-NP-Za-km-z]{11})?")
MIN_TOKEN_CHARS = 32
MIN_CLASS_SWITCHES = 0.3


def _class(c: str) -> str:
    return "u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else ""


def high_entropy(run: str) -> bool:
    """A random-looking string: 32 or more characters of base64's alphabet holding upper and lower case
    letters and digits, whose characters are spread (Shannon entropy per character at least 80 % of that
    of a random string of its length, at most 64 characters counted) and change case or kind often (at
    least 30 % of neighbouring letters and digits). Hex strings (digests, commit ids, GPU UUIDs) and paths
    are not taken."""
    body = run.rstrip("=")
    if len(body) < MIN_TOKEN_CHARS or body.startswith("/") or _HEX.fullmatch(body):
        return False
    if not (
        any(c.isupper() for c in body) and any(c.islower() for c in body) and any(c.isdigit() for c in body)
    ):
        return False
    counts = Counter(body)
    entropy = -sum(n / len(body) * math.log2(n / len(body)) for n in counts.values())
    if entropy < 0.8 * math.log2(min(len(body), 64)):
        return False
    classes = [_class(c) for c in body]
    pairs = [(a, b) for a, b in zip(classes, classes[1:]) if a and b]
    return bool(pairs) and sum(a != b for a, b in pairs) / len(pairs) >= MIN_CLASS_SWITCHES


def wallet_shaped(text: str, miner: bool) -> bool:
    """A cryptocurrency address, public by nature: Monero's (95 or 106 base58 characters from 4 or 8)
    anywhere; in a miner's command line any base58 string of 26 or more characters (Bitcoin's, Litecoin's,
    Ravencoin's... addresses). Ethereum's (``0x`` and hex) and bech32 addresses (lower case) are never
    taken for tokens."""
    body = text.rstrip("=")
    return bool(MONERO.fullmatch(body)) or (miner and len(body) >= 26 and bool(_BASE58.fullmatch(body)))


# ---- the operator's patterns ------------------------------------------------------------------------

_sre: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11) else "sre_parse")
_SINGLE = frozenset({"LITERAL", "NOT_LITERAL", "ANY", "IN"})
_FLAT = _SINGLE | {"AT", "CATEGORY"}
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})


class UnsafePattern(ValueError):
    """A pattern that cannot be used; the message says why."""


def _steps(items: Iterable[Any], limit: float) -> float:
    """An upper estimate of the ways the items can be tried at one starting position: each repetition
    of one character multiplies by the lengths it may take, an alternation adds its branches."""
    total = 1.0
    for op, av in items:
        kind = op.name
        if kind in _FLAT:
            cost = 1.0
        elif kind in _REPEATS:
            low, high, body = av
            body = list(body)
            if len(body) == 1 and body[0][0].name in _SINGLE:
                cost = float(min(high, MAX_FIELD_CHARS) - min(low, MAX_FIELD_CHARS) + 1)
            elif high > MAX_GROUP_REPEAT:
                raise UnsafePattern(
                    "a repetition of more than one character (a group) may repeat at most "
                    f"{MAX_GROUP_REPEAT} times ({{0,{MAX_GROUP_REPEAT}}}): nested or repeated groups can "
                    "take exponential time"
                )
            else:
                once = _steps(body, limit)
                cost = sum(once**k for k in range(low, high + 1)) or 1.0
        elif kind == "SUBPATTERN":
            cost = _steps(av[-1], limit)
        elif kind == "BRANCH":
            cost = sum(_steps(branch, limit) for branch in av[1])
        elif kind in ("ASSERT", "ASSERT_NOT"):
            cost = _steps(av[1], limit)
        elif kind == "ATOMIC_GROUP":
            cost = _steps(av, limit)
        elif kind.startswith("GROUPREF"):
            raise UnsafePattern("backreferences and conditional groups are not allowed")
        else:
            raise UnsafePattern(f"{kind} is not allowed")
        total *= cost
        if total > limit:
            return total
    return total


def worst_case_steps(pattern: str) -> float:
    """An upper estimate of the engine's steps for one search of ``pattern`` in a field of
    MAX_FIELD_CHARS characters that it does not match: each starting position, times the ways its
    repetitions and alternations can be tried there."""
    try:
        parsed = _sre.parse(pattern)
        return MAX_FIELD_CHARS * _steps(parsed, MAX_PATTERN_STEPS / MAX_FIELD_CHARS)
    except UnsafePattern:
        raise
    except re.error as exc:
        raise UnsafePattern(f"not a regular expression: {exc}") from None
    except (AttributeError, TypeError, ValueError) as exc:  # the parser's form is CPython's, not an API
        raise UnsafePattern(f"cannot be checked with this Python ({type(exc).__name__}): refused") from None


def check_pattern(pattern: Any) -> re.Pattern[str]:
    """The compiled pattern, or UnsafePattern saying why it may not run on the evidence."""
    if not isinstance(pattern, str) or not pattern:
        raise UnsafePattern("expected a non-empty string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafePattern(f"{len(pattern)} characters; at most {MAX_PATTERN_CHARS}")
    try:
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise UnsafePattern(f"not a regular expression: {exc}") from None
    steps = worst_case_steps(pattern)
    if steps > MAX_PATTERN_STEPS:
        raise UnsafePattern(
            f"its worst case on a {MAX_FIELD_CHARS}-character field is estimated at more than "
            f"{MAX_PATTERN_STEPS:.0e} steps: bound all its repetitions but one (\\s{{0,8}} rather than \\s*)"
        )
    if compiled.fullmatch(""):
        raise UnsafePattern("it matches the empty string")
    return compiled


# ---- redaction --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Redacted:
    text: str
    kinds: tuple[str, ...]  # what was cut, in KINDS's order; empty: nothing


Span = tuple[int, int, str]  # start, end, kind


class Redactor:
    """The rules above, then ``patterns`` (EvidenceRedactPatterns, checked: check_pattern)."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self._compiled = [check_pattern(p) for p in self.patterns]

    def redact(self, text: str, miner: bool = False) -> Redacted:
        """``text`` with what the rules find replaced by REDACTED. ``miner``: the text is a miner's
        command line, whose pool login and wallets are kept."""
        if not text:
            return Redacted(text, ())
        spans = [
            *_words(text, miner),
            *_assignments(text, miner),
            *_url_passwords(text),
            *_tokens(text, miner),
        ]
        for pattern in self._compiled:
            for match in pattern.finditer(text):
                groups = [match.span(g) for g in range(1, (pattern.groups or 0) + 1)] or [match.span()]
                spans.extend((start, end, PATTERN) for start, end in groups if end > start >= 0)
        return _apply(text, spans)


def _apply(text: str, spans: list[Span]) -> Redacted:
    """``spans`` (in the rules' order) replaced by REDACTED; a span within those of earlier rules adds
    nothing, so that its kind is not named twice."""
    accepted: list[Span] = []
    for start, end, kind in spans:
        if end > start and not any(s <= start and end <= e for s, e, _ in accepted):
            accepted.append((start, end, kind))
    if not accepted:
        return Redacted(text, ())
    merged: list[tuple[int, int]] = []
    for start, end, _ in sorted(accepted):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    pieces, at = [], 0
    for start, end in merged:
        pieces += [text[at:start], REDACTED]
        at = end
    pieces.append(text[at:])
    kinds = {kind for _, _, kind in accepted}
    return Redacted("".join(pieces), tuple(k for k in KINDS if k in kinds))


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1].strip("\"'")


def _secret_header(word: str) -> Optional[tuple[int, str]]:
    """For a word naming a secret header (``Authorization:``, ``X-Api-Key:abc``, ``http.extraHeader=
    Cookie:``): where its value starts in the word, and the value; None for other words."""
    found = _HEADER.search(word)
    if found is None or not SECRET_HEADERS.fullmatch(found.group("name")):
        return None
    return found.start("value"), found.group("value")


def _words(text: str, miner: bool) -> list[Span]:
    """The word-by-word rules: options and their values, programs' own options, bare keywords,
    headers."""
    spans: list[Span] = []
    program: Optional[ProgramOptions] = None
    after_seen = False
    pending: Optional[tuple[str, str]] = None  # the next word is a value: (kind, separator or "")
    header = False  # within a header's value: its credentials come next
    for match in re.finditer(r"\S+", text):
        start, end, word = match.start(), match.end(), match.group()
        option = word.startswith("-") and len(word) > 1
        if header:
            if option or "://" in word:
                header = False
            elif word.lower() in AUTH_SCHEMES:
                continue
            else:
                spans.append((start, end, AUTH_HEADER))
                header = word.endswith((",", ";"))  # Digest's parameters, cookies: more follow
                continue
        if pending is not None:
            (kind, separator), pending = pending, None
            if not option:
                if not separator:
                    spans.append((start, end, kind))
                elif separator in word:
                    spans.append((start + word.index(separator) + 1, end, kind))
                continue
        if option:
            found = _option_value(word, program, after_seen, miner)
            if found is None:
                continue
            offset, separator = found
            if offset < 0:
                pending = (SECRET_OPTION, separator)
            elif start + offset < end:
                spans.append((start + offset, end, SECRET_OPTION))
            continue
        base = _basename(word)
        if base in PROGRAM_OPTIONS:
            program, after_seen = PROGRAM_OPTIONS[base], False
        elif program is not None and program.command_follows:
            program = None  # the command it runs, whose options are its own
        elif program is not None and program.after and word == program.after:
            after_seen = True
        if word.lower() in BARE_KEYWORDS or (
            "_" in word and _IDENTIFIER.fullmatch(word) and secret_name(word)
        ):
            pending = (SECRET_OPTION, "")
        in_header = _secret_header(word)
        if in_header is not None:
            offset, value = in_header
            if value and value.lower() not in AUTH_SCHEMES:
                spans.append((start + offset, end, AUTH_HEADER))
            else:
                header = True
    return spans


def _option_value(
    word: str, program: Optional[ProgramOptions], after_seen: bool, miner: bool
) -> Optional[tuple[int, str]]:
    """For an option word that carries a secret: where in the word its value starts (-1: the value is
    the next word) and the separator after which the secret starts in a USER:SECRET value ("": all of
    it); None for other options."""
    if program is not None and (not program.after or after_seen) and not word.startswith("--"):
        name = word[1:]
        if name in program.separate:
            return -1, ""
        short = _SHORT_OPTION.fullmatch(word)
        if short is not None:
            letter, rest = short.groups()
            if rest and (letter in program.attached or letter in program.separate):
                return 2, ""
            for split_letter, separator in program.split:
                if letter == split_letter:
                    if not rest:
                        return -1, separator
                    return (2 + rest.index(separator) + 1, "") if separator in rest else None
    found = _LONG_OPTION.fullmatch(word)
    if found is None:
        return None
    dashes, name, value = found.groups()
    if dashes == "-" and (len(name) == 1 or (name[0] == "D" and value is not None)):
        return None  # a short option, whose letter means what the program says; Java's -Dname=value
    if miner and name in MINER_LOGIN_OPTIONS:
        return None
    if program is not None and program.split and name in ("user", "proxy-user"):
        separator = program.split[0][1]
        if value is None:
            return -1, separator
        at = len(dashes) + len(name) + 1
        return (at + value.index(separator) + 1, "") if separator in value else None
    if not secret_name(name):
        return None
    return (-1, "") if value is None else (len(dashes) + len(name) + 1, "")


def _assignments(text: str, miner: bool) -> list[Span]:
    """NAME=value where NAME means a secret (an option's ``--name=value`` is the option rule's)."""
    spans: list[Span] = []
    for match in _ASSIGNMENT.finditer(text):
        if match.group("jname") is not None:
            name, start, end = match.group("jname"), match.start("jvalue"), match.end("jvalue")
        else:
            if match.group("dashes"):
                continue
            name, start = match.group("name"), match.end()
            end = _VALUE.match(text, start).end()  # type: ignore[union-attr]  # matches the empty string
        if miner and name in MINER_LOGIN_OPTIONS:
            continue
        if end > start and secret_name(name) and not _REFERENCE.fullmatch(text, start, end):
            spans.append((start, end, SECRET_ASSIGNMENT))
    return spans


def _url_passwords(text: str) -> list[Span]:
    return [
        (m.start("password"), m.end("password"), URL_PASSWORD)
        for m in _URL_USERINFO.finditer(text)
        if not STRATUM.match(m.group("scheme"))
    ]


def _tokens(text: str, miner: bool) -> list[Span]:
    spans = [(m.start(), m.end(), TOKEN) for m in KNOWN_TOKENS.finditer(text)]
    for match in _TOKEN_RUN.finditer(text):
        run = match.group("run")
        if high_entropy(run) and not wallet_shaped(run, miner):
            spans.append((match.start("run"), match.end("run"), TOKEN))
    return spans

"""Fleet approvals (ApprovedExecutables, ApprovedEndpoints) and the keys endpoints are grouped by."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from ddcustom.device.baseline.approvals import ApprovalError, Approvals
from ddcustom.device.baseline.deployment import DeploymentTrust
from ddcustom.device.baseline.keys import endpoint_group, endpoint_key, listening_key, parse_endpoint_pattern
from ddcustom.device.sources.identity import DELETED, INLINE, ExecutableIdentity

SHA = "0123456789abcdef" * 4


def test_executables_by_hash_or_path_match_what_runs() -> None:
    approvals = Approvals.parse([SHA.upper(), "sha256:" + "f" * 64, "/opt/app/run.py", "/usr/bin/tool"])
    assert approvals.sha256s == {SHA, "f" * 64}
    assert approvals.is_approved_executable(ExecutableIdentity(path="/anywhere/x", sha256=SHA))
    assert approvals.is_approved_executable(ExecutableIdentity(path="/usr/bin/tool", sha256="1" * 64))
    script = ExecutableIdentity(path="/usr/bin/python3", sha256="2" * 64, script="/opt/app/run.py")
    assert approvals.is_approved_executable(script)
    # approving an interpreter's path or hash does not approve what it runs
    interpreter = Approvals.parse(["/usr/bin/python3", "2" * 64])
    assert not interpreter.is_approved_executable(
        ExecutableIdentity(path="/usr/bin/python3", sha256="2" * 64, script="/dev/shm/x.py")
    )
    assert not interpreter.is_approved_executable(
        ExecutableIdentity(path="/usr/bin/python3", sha256="2" * 64, script=INLINE)
    )
    assert interpreter.is_approved_executable(ExecutableIdentity(path="/usr/bin/python3", sha256="2" * 64))
    deleted = ExecutableIdentity(path="/usr/bin/tool", sha256="", reason_unknowable=DELETED)
    assert not approvals.is_approved_executable(deleted)


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "xmrig",
            "ApprovedExecutables entry 'xmrig': expected a SHA-256 (64 hex digits) or an absolute path",
        ),
        ("abc123", "ApprovedExecutables entry 'abc123'"),
        ("relative/bin", "ApprovedExecutables entry 'relative/bin'"),
        (42, "ApprovedExecutables entry 42: expected a string"),
    ],
)
def test_bad_executable_entries_are_named(entry: object, message: str) -> None:
    with pytest.raises(ApprovalError) as raised:
        Approvals.parse(["/ok", entry])  # type: ignore[list-item]
    assert message in str(raised.value)


def test_the_groups_common_programs_name_what_runs_by_one_hash() -> None:
    script_sha, python = "3" * 64, "2" * 64
    module = hashlib.sha256(f"{python} -m worker".encode()).hexdigest()
    common = Approvals.parse(fleet_known=[script_sha.upper(), "sha256:" + module, SHA])
    assert common.fleet_known == {script_sha, module, SHA}
    assert common.is_fleet_known(
        ExecutableIdentity("/usr/bin/python3", python, "/opt/app/run.py", script_sha)
    )
    assert common.is_fleet_known(ExecutableIdentity("/usr/bin/python3", python, "-m worker"))
    assert common.is_fleet_known(ExecutableIdentity("/opt/tool", SHA))
    assert not common.is_fleet_known(ExecutableIdentity("/usr/bin/python3", python, "-m other"))
    assert not common.is_fleet_known(ExecutableIdentity("/usr/bin/python3", python))  # the bare interpreter
    assert not common.is_approved_executable(ExecutableIdentity("/opt/tool", SHA))  # not an approval


@pytest.mark.parametrize(
    "entries, message",
    [
        (
            ["/usr/bin/tool"],
            "FleetKnownExecutables entry '/usr/bin/tool': expected a SHA-256 (64 hex digits)",
        ),
        ([7], "FleetKnownExecutables entry 7: expected a SHA-256"),
        ([f"{n:064x}" for n in range(5001)], "FleetKnownExecutables: 5001 entries, at most 5000"),
    ],
)
def test_bad_lists_of_common_programs_are_named(entries: list[object], message: str) -> None:
    with pytest.raises(ApprovalError) as raised:
        Approvals.parse(fleet_known=entries)  # type: ignore[arg-type]
    assert message in str(raised.value)


def test_endpoints_by_cidr_and_port() -> None:
    approvals = Approvals.parse(
        endpoints=[
            "10.0.0.0/8:443",
            "192.0.2.7",
            "198.51.100.0/24",
            "[2001:db8::/32]:8883",
            "2001:db8:ff::/48",
        ]
    )
    assert approvals.is_approved_endpoint("10.1.2.3", 443)
    assert not approvals.is_approved_endpoint("10.1.2.3", 3333)
    assert not approvals.is_approved_endpoint("11.1.2.3", 443)
    assert approvals.is_approved_endpoint("192.0.2.7", 1)
    assert not approvals.is_approved_endpoint("192.0.2.8", 1)
    assert approvals.is_approved_endpoint("198.51.100.255", 65535)
    assert approvals.is_approved_endpoint("::ffff:10.9.9.9", 443)
    assert approvals.is_approved_endpoint("2001:db8:1::1", 8883)
    assert not approvals.is_approved_endpoint("2001:db8:1::1", 443)
    assert approvals.is_approved_endpoint("2001:db8:ff:1::1", 443)
    assert not approvals.is_approved_endpoint("not an address", 443)
    assert approvals.endpoints.texts == [
        "10.0.0.0/8:443",
        "192.0.2.7/32",
        "198.51.100.0/24",
        "[2001:db8::/32]:8883",
        "2001:db8:ff::/48",
    ]


@pytest.mark.parametrize(
    "entry, message",
    [
        ("10.0.0.1/8:443", "'10.0.0.1/8:443': 10.0.0.1/8 has host bits set"),
        ("10.0.0.0/8:70000", "port '70000' is not a number from 1 to 65535"),
        ("10.0.0.0/8:https", "port 'https'"),
        ("pool.example.com:3333", "'pool.example.com:3333'"),
        ("[2001:db8::/32]443", "expected [IPv6 address or CIDR]:port"),
        ("::ffff:10.0.0.0/104", "write IPv4-mapped addresses as IPv4"),
    ],
)
def test_bad_endpoint_entries_are_named(entry: str, message: str) -> None:
    with pytest.raises(ApprovalError) as raised:
        Approvals.parse(endpoints=[entry])
    assert str(raised.value).startswith("ApprovedEndpoints entry ")
    assert message in str(raised.value)


def test_a_bare_ipv6_text_is_an_address_without_a_port() -> None:
    approvals = Approvals.parse(endpoints=["2001:db8::1:443"])
    assert approvals.is_approved_endpoint("2001:db8::1:443", 22)
    assert not approvals.is_approved_endpoint("2001:db8::1", 443)


@pytest.mark.parametrize(
    "ip, group",
    [
        ("203.0.113.7", "203.0.113.0/24"),
        ("::ffff:203.0.113.7", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8::1", "2001:db8::/64"),
        ("fe80::1", "fe80::/64"),
        ("2001:0:0:1::9", "2001:0:0:1::/64"),
    ],
)
def test_endpoint_groups(ip: str, group: str) -> None:
    assert endpoint_group(ip) == group
    # the same text the approvals' canonical form gives, so an approved group is a plain key lookup
    network, _ = parse_endpoint_pattern(group)
    assert str(network) == group
    assert ipaddress.ip_address(ip.replace("::ffff:", "")) in network


def test_endpoint_and_listening_keys() -> None:
    assert endpoint_key("203.0.113.7", 443) == "203.0.113.0/24:443"
    assert endpoint_key("2001:db8::1", 443) == "[2001:db8::/64]:443"
    assert listening_key("udp", 53) == "udp:53"
    with pytest.raises(ValueError):
        endpoint_key("203.0.113", 443)
    with pytest.raises(ValueError):
        listening_key("sctp", 1)
    with pytest.raises(ValueError):
        listening_key("tcp", 0)


def test_deployment_trust_names_the_component_and_version() -> None:
    trust = DeploymentTrust("/greengrass/v2/")
    placed = ExecutableIdentity(
        path="/greengrass/v2/packages/artifacts-unarchived/com.example.App/1.2.0/app/bin/serve", sha256=SHA
    )
    assert trust.component_of(placed) == "com.example.App@1.2.0"
    for path in (
        "/greengrass/v2/work/com.example.App/serve",
        "/greengrass/v2/packages/artifacts/com.example.App/1.2.0",
        "/greengrass/v2/packages/artifacts/com.example.App/1.2.0/../../../../../tmp/x",
        "/greengrass/v2/packages/recipes/x",
        "/tmp/greengrass/v2/packages/artifacts/c/1/x",
    ):
        assert trust.component_of(ExecutableIdentity(path=path, sha256=SHA)) is None, path

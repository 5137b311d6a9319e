"""boto3 clients with the "standard" retry mode (backs off on throttling), one per service key."""

from __future__ import annotations

from typing import Any

from ddcustom.tooling.cloud.steps import Clients

MAX_ATTEMPTS = 8


def client_factory(region: str) -> Clients:
    """Service key -> cached client. "iot-detect" and "iot-fleet" are iot clients for the Device Defender
    calls and for the fleet indexing, fleet metric and search calls (tests stub those apart)."""
    import boto3
    from botocore.config import Config

    session = boto3.Session(region_name=region)
    config = Config(region_name=region, retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS})
    cache: dict[str, Any] = {}

    def get(service: str) -> Any:
        if service not in cache:
            name = "iot" if service in ("iot-detect", "iot-fleet") else service
            cache[service] = session.client(name, config=config)  # type: ignore[call-overload]
        return cache[service]

    return get


def dynamodb_table(region: str, name: str) -> Any:
    """A DynamoDB table (boto3's Table resource: plain values in and out), with the same retries."""
    import boto3
    from botocore.config import Config

    config = Config(region_name=region, retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS})
    return boto3.Session(region_name=region).resource("dynamodb", config=config).Table(name)

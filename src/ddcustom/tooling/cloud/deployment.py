"""The Greengrass deployment of the component to the thing group, as a provisioning step.

A thing group has one deployment at a time and a new one replaces it, so the step starts from the
group's latest deployment and only adds (or, on teardown, removes) this component: whatever else the
group runs stays, and so do the deployment's policies and job settings.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from botocore.exceptions import ClientError

from ddcustom.tooling.cloud.options import TAG_KEY, CloudOptions
from ddcustom.tooling.cloud.steps import NOT_FOUND, Call, Clients, Conflict, Env, Status, Step, error_code

NUCLEUS = "aws.greengrass.Nucleus"
# The recipe's access control uses {iot:thingName}: nucleus >= 2.6.0 with this option (docs/packaging.md).
MIN_NUCLEUS = (2, 6, 0)
NUCLEUS_MERGE = {"interpolateComponentConfiguration": True}
# The group's common programs, written by `ddcustom cloud prevalence --publish-known` (docs/fleet.md).
# Setup keeps it when it writes the component's merge configuration again.
FLEET_KNOWN_KEY = "FleetKnownExecutables"
# On with --prevalence on (unless the merge configuration says otherwise): the devices publish their
# inventory, which the prevalence function reads.
INVENTORY_KEY = "FleetInventory"
# GetDeployment fields that CreateDeployment takes as they are: a new revision keeps them.
CARRIED_FIELDS = ("deploymentPolicies", "iotJobConfiguration")


class DeploymentStep(Step):
    def __init__(self, opts: CloudOptions, env: Env, group_arn: str) -> None:
        self.opts, self.group_arn = opts, group_arn
        self.component_arn = env.arn(
            "greengrass", f"components:{opts.component}:versions:{opts.component_version}"
        )
        self.nucleus_arn = f"arn:{env.partition}:greengrass:{env.region}:aws:components:{NUCLEUS}"
        self.label = (
            f"Greengrass deployment of {opts.component} {opts.component_version} to {opts.thing_group}"
        )
        self.components: Optional[dict[str, Any]] = None  # what the group should run; set by check()
        self.carried: dict[str, Any] = {}  # CARRIED_FIELDS of the group's latest deployment

    def _latest(self, aws: Clients) -> Optional[dict[str, Any]]:
        return latest_deployment(aws, self.group_arn)

    def _newest_nucleus(self, aws: Clients) -> str:
        versions = aws("greengrassv2").list_component_versions(arn=self.nucleus_arn, maxResults=1)
        return str(versions["componentVersions"][0]["componentVersion"])

    def check(self, aws: Clients) -> Status:
        try:
            aws("greengrassv2").describe_component(arn=self.component_arn)
        except ClientError as exc:
            if error_code(exc) not in NOT_FOUND:
                raise
            raise Conflict(
                f"component {self.opts.component} {self.opts.component_version} is not published in "
                f"{self.component_arn.split(':')[3]}: publish it first (`gdk component publish`, see "
                "docs/deploying.md) or pass --component-version"
            ) from None
        latest = self._latest(aws)
        current: dict[str, Any] = dict(latest.get("components", {})) if latest else {}
        self.carried = _carried(latest)
        nucleus = current.get(NUCLEUS, {})
        version = self.opts.nucleus_version or nucleus.get("componentVersion") or self._newest_nucleus(aws)
        if _version_tuple(version) < MIN_NUCLEUS:
            raise Conflict(
                f"{NUCLEUS} {version} (the group's) is older than 2.6.0, which the component's access "
                "control needs; pass --nucleus-version"
            )
        self.components = self._wanted(current, version)
        if latest is None or current != self.components:
            return Status.MISSING
        return Status.OWNED if latest.get("tags", {}).get(TAG_KEY) == self.opts.stack else Status.PRESENT

    def _wanted(self, current: dict[str, Any], nucleus_version: str) -> dict[str, Any]:
        """The group's components with this one added and the nucleus option it needs."""
        nucleus = current.get(NUCLEUS, {})
        nucleus_update = dict(nucleus.get("configurationUpdate", {}))
        nucleus_merge = {**json.loads(nucleus_update.get("merge") or "{}"), **NUCLEUS_MERGE}
        nucleus_update["merge"] = json.dumps(nucleus_merge, sort_keys=True)
        wanted = dict(self.opts.merge_configuration)
        published = _merge_of(current.get(self.opts.component, {}))
        if FLEET_KNOWN_KEY in published and FLEET_KNOWN_KEY not in wanted:
            wanted[FLEET_KNOWN_KEY] = published[FLEET_KNOWN_KEY]  # --publish-known's, kept
        if self.opts.prevalence:
            wanted.setdefault(INVENTORY_KEY, True)  # the devices send what prevalence counts
        merge = json.dumps(wanted, sort_keys=True)
        return {
            **current,
            NUCLEUS: {**nucleus, "componentVersion": nucleus_version, "configurationUpdate": nucleus_update},
            self.opts.component: {
                "componentVersion": self.opts.component_version,
                "configurationUpdate": {"merge": merge},
            },
        }

    def planned(self) -> list[Call]:
        """A group without a deployment; the nucleus version is looked up at setup time."""
        self.components = self._wanted({}, self.opts.nucleus_version or "<newest>")
        return self.create()

    def create(self) -> list[Call]:
        if self.components is None:
            raise RuntimeError("DeploymentStep.create() before check()")
        params = {
            "targetArn": self.group_arn,
            "deploymentName": self.opts.deployment_name,
            "components": self.components,
            **self.carried,
            "tags": dict(self.opts.tags),
        }
        return [Call("greengrassv2", "CreateDeployment", params)]

    def owned(self, aws: Clients) -> bool:
        latest = self._latest(aws)
        return (
            latest is not None
            and latest.get("tags", {}).get(TAG_KEY) == self.opts.stack
            and self.opts.component in latest.get("components", {})
        )

    def remove(self, aws: Clients) -> list[Call]:
        """A new revision without the component: the devices remove it; the rest of the group stays."""
        latest = self._latest(aws) or {}
        remaining = {k: v for k, v in latest.get("components", {}).items() if k != self.opts.component}
        params = {
            "targetArn": self.group_arn,
            "deploymentName": f"{self.opts.stack}-removal",
            "components": remaining,
            **_carried(latest),
        }
        return [Call("greengrassv2", "CreateDeployment", params)]


def latest_deployment(aws: Clients, group_arn: str) -> Optional[dict[str, Any]]:
    """The thing group's current deployment (GetDeployment), or None."""
    greengrass = aws("greengrassv2")
    found = greengrass.list_deployments(targetArn=group_arn, historyFilter="LATEST_ONLY")
    deployments = found.get("deployments", [])
    if not deployments:
        return None
    return dict(greengrass.get_deployment(deploymentId=deployments[0]["deploymentId"]))


def _merge_of(spec: dict[str, Any]) -> dict[str, Any]:
    merge = json.loads(spec.get("configurationUpdate", {}).get("merge") or "{}")
    return merge if isinstance(merge, dict) else {}


class KnownExecutablesStep(Step):
    """``FleetKnownExecutables`` in the merge configuration of the component in the group's current
    deployment: a new revision with that one key changed, everything else (other components, policies,
    tags) as it is. Refused when the deployed version of the component does not declare the key in its
    recipe's default configuration: the component refuses a configuration with a key it does not know."""

    def __init__(self, opts: CloudOptions, env: Env, group_arn: str, known: list[str]) -> None:
        self.opts, self.env, self.group_arn, self.known = opts, env, group_arn, sorted(known)
        self.label = (
            f"{FLEET_KNOWN_KEY} ({len(self.known)} SHA-256) in the deployment of {opts.component} to "
            f"{opts.thing_group}"
        )
        self.params: Optional[dict[str, Any]] = None  # set by check()

    def check(self, aws: Clients) -> Status:
        latest = latest_deployment(aws, self.group_arn)
        components = dict(latest.get("components", {})) if latest else {}
        spec = components.get(self.opts.component)
        if latest is None or spec is None:
            raise Conflict(
                f"the thing group {self.opts.thing_group} has no deployment of {self.opts.component}: "
                "deploy it first (`ddcustom cloud setup`)"
            )
        version = str(spec.get("componentVersion"))
        self._check_recipe(aws, version)
        merge = _merge_of(spec)
        if merge.get(FLEET_KNOWN_KEY) == self.known:
            return Status.PRESENT
        update = {**spec.get("configurationUpdate", {})}
        update["merge"] = json.dumps({**merge, FLEET_KNOWN_KEY: self.known}, sort_keys=True)
        components[self.opts.component] = {**spec, "configurationUpdate": update}
        self.params = {
            "targetArn": self.group_arn,
            "deploymentName": latest.get("deploymentName") or self.opts.deployment_name,
            "components": components,
            **_carried(latest),
        }
        if latest.get("tags"):
            self.params["tags"] = dict(latest["tags"])
        return Status.CHANGED

    def _check_recipe(self, aws: Clients, version: str) -> None:
        arn = self.env.arn("greengrass", f"components:{self.opts.component}:versions:{version}")
        found = aws("greengrassv2").get_component(arn=arn, recipeOutputFormat="JSON")
        recipe = json.loads(found["recipe"])
        defaults = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
        if FLEET_KNOWN_KEY not in defaults:
            raise Conflict(
                f"{self.opts.component} {version}, deployed to {self.opts.thing_group}, does not read "
                f"{FLEET_KNOWN_KEY} (its recipe's default configuration lacks it): it would refuse the "
                "configuration. Deploy a version that reads it first; nothing was changed"
            )

    def create(self) -> list[Call]:
        if self.params is None:
            raise RuntimeError("KnownExecutablesStep.create() before check()")
        return [Call("greengrassv2", "CreateDeployment", self.params)]


def _carried(deployment: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {key: deployment[key] for key in CARRIED_FIELDS if deployment and key in deployment}


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split("-")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)

"""Executables that a Greengrass deployment put on the device.

Updating the watched application through a deployment gives it new files, hence new identities (new
SHA-256, new version folder): without this, every device of the fleet would raise an alarm at once.
The nucleus unpacks each component version's artifacts into

    <root>/packages/artifacts/<component>/<version>/...
    <root>/packages/artifacts-unarchived/<component>/<version>/...

(``root`` is the nucleus's root path, ``/greengrass/v2`` by default) before it runs the component's
lifecycle with that version. An executable, or an interpreter's script, under one of those folders is
therefore something a deployment placed there: the store records it with origin ``deployment`` the
first time it runs, learning period or not, and remembers the component and version.

The trade-off: the device trusts the nucleus's folders, not the content. Anyone who can write into them
can run a miner there unseen by this rule; on a standard install they belong to root (the nucleus),
and an attacker who is root can also stop this component, so little is lost. The component's *work*
folder (``<root>/work/<component>``) is not trusted: the application's own user writes there at run
time, so a compromised application could drop a miner there. The interpreter itself must be a real file
(deleted and memfd executables are never trusted), and the other signals (CPU, pool ports, GPU use
outside inference) still watch a trusted executable.
"""

from __future__ import annotations

import os
from typing import Optional

from ddcustom.device.sources.identity import ExecutableIdentity

DEFAULT_GREENGRASS_ROOT = "/greengrass/v2"
ARTIFACT_FOLDERS = ("packages/artifacts", "packages/artifacts-unarchived")


class DeploymentTrust:
    def __init__(self, greengrass_root: str = DEFAULT_GREENGRASS_ROOT) -> None:
        root = os.path.normpath(greengrass_root)
        self._prefixes = tuple(os.path.join(root, folder) + "/" for folder in ARTIFACT_FOLDERS)

    def component_of(self, identity: ExecutableIdentity) -> Optional[str]:
        """``<component>@<version>`` whose artifacts hold what ``identity`` runs; None when none does."""
        if not identity.knowable:
            return None
        path = identity.content_path
        for prefix in self._prefixes:
            if path.startswith(prefix):
                parts = path[len(prefix) :].split("/")
                # component / version / at least one path element below the version folder
                if len(parts) >= 3 and all(part not in ("", ".", "..") for part in parts):
                    return f"{parts[0]}@{parts[1]}"
        return None

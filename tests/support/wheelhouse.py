"""Wheels of what is installed here: so the end-to-end test installs the component without a network.

A core device without internet gets its dependencies from a ``wheels/`` folder in the artifact
(docs/packaging.md); the recipe's Install then runs ``pip install --no-index --find-links wheels``. The
test builds that folder from the distributions installed in the test's own environment, at the versions
installed there: each one is packed back into a wheel from the files its RECORD lists (the inverse of
what pip did when it installed it), with the platform tag pip recorded in its WHEEL file. Scripts and
other files outside site-packages are left out; pip writes console scripts again from entry_points.txt.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

# Written by the installer, not part of a wheel; RECORD is written anew.
_INSTALLER_FILES = {"INSTALLER", "RECORD", "REQUESTED", "direct_url.json"}


def build_wheelhouse(requirements: list[str], dest: Path) -> list[Path]:
    """Wheels of ``requirements`` and everything they need (extras and markers evaluated here) in dest."""
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    wheels: list[Path] = []
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        key = _normalise(requirement.name)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            raise RuntimeError(f"{requirement.name} is not installed here: cannot make its wheel") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise RuntimeError(f"{requirement} wanted, {dist.version} installed")
        wheels.append(_repack(dist, dest))
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is None or needed.marker.evaluate({"extra": ""}):
                pending.append(needed)
    return wheels


def _repack(dist: Distribution, dest: Path) -> Path:
    wheel_info = dist.read_text("WHEEL") or ""
    tags = re.findall(r"^Tag:\s*(\S+)\s*$", wheel_info, flags=re.MULTILINE)
    if not tags:
        raise RuntimeError(f"{dist.metadata['Name']}: no Tag in its WHEEL file (not installed from a wheel?)")
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = dest / f"{name}-{dist.version}-{tags[0]}.whl"
    records: list[str] = []
    dist_info = None
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or []:
            parts = file.parts
            if ".." in parts or "__pycache__" in parts or file.suffix == ".pyc":
                continue
            if parts[0].endswith(".dist-info"):
                dist_info = parts[0]
                if file.name in _INSTALLER_FILES:
                    continue
            data = Path(str(dist.locate_file(file))).read_bytes()
            arcname = file.as_posix()
            wheel.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arcname},sha256={digest},{len(data)}")
        if dist_info is None:
            raise RuntimeError(f"{dist.metadata['Name']}: its RECORD lists no .dist-info folder")
        records.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return path


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

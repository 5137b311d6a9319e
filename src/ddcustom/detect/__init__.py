"""On-device detection: Device Defender security profiles evaluated on each Sample."""

from __future__ import annotations

from ddcustom.detect.engine import Engine
from ddcustom.detect.profile import Behavior, Criteria, Profile, ProfileError, load_profile

__all__ = ["Behavior", "Criteria", "Engine", "Profile", "ProfileError", "load_profile"]

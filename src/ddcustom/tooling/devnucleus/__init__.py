"""A stand-in Greengrass nucleus for tests and local runs (see docs/greengrass.md)."""

from __future__ import annotations

from ddcustom.tooling.devnucleus.access import RecipeError
from ddcustom.tooling.devnucleus.codec import FrameError
from ddcustom.tooling.devnucleus.server import DevNucleus, Published

__all__ = ["DevNucleus", "FrameError", "Published", "RecipeError"]

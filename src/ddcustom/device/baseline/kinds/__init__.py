"""The kinds of items the learned baseline holds, each declared once (kind.py says what a declaration
holds), and ``KINDS``, the registry everything else takes them from:

- ``executable`` and ``gpu_executable`` (executables.py): what processes and GPU compute processes run;
- ``endpoint`` (endpoints.py): the networks and ports the device opened connections to;
- ``listening`` (listening.py): the ports it listens on.

The order of ``KINDS`` is the file's, ``show``'s, and the order the observer looks at a sample in.

A new kind is a module here declaring a ``Kind``, added to ``KINDS``; the metrics it names in metrics.py
(read with ``_baseline``, which makes them BASELINE_METRICS), and the ``BaselineStats`` fields its watch
fills in sample.py. tests/device/baseline/test_kinds.py checks that these agree.
"""

from __future__ import annotations

from ddcustom.device.baseline.kinds.endpoints import ENDPOINT
from ddcustom.device.baseline.kinds.executables import EXECUTABLE, GPU_EXECUTABLE
from ddcustom.device.baseline.kinds.kind import Kind
from ddcustom.device.baseline.kinds.listening import LISTENING

KINDS: tuple[Kind, ...] = (EXECUTABLE, GPU_EXECUTABLE, ENDPOINT, LISTENING)
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}

__all__ = ["BY_NAME", "ENDPOINT", "EXECUTABLE", "GPU_EXECUTABLE", "KINDS", "LISTENING", "Kind"]

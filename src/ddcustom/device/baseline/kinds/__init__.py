"""The kinds of items the learned baseline holds, each declared once (kind.py says what a declaration
holds), and ``KINDS``, the registry everything else takes them from:

- ``executable`` and ``gpu_executable`` (executables.py): what processes and GPU compute processes run;
- ``endpoint`` (endpoints.py): the networks and ports the device opened connections to;
- ``listening`` (listening.py): the ports it listens on;
- ``program_cpu`` and ``program_gpu`` (program_levels.py, levels.py): how much CPU and GPU each known
  program used;
- ``program_code`` (program_code.py): the shared objects each known program maps, and whether it had
  executable memory no file backs;
- ``program_network`` (program_network.py): whether each known program opened connections or listened.

The order of ``KINDS`` is the file's, ``show``'s, and the order the observer looks at a sample in: the
executable kind first, since the kinds about what programs do read the programs it found
(``Context.programs``).

A new kind is a module here declaring a ``Kind``, added to ``KINDS``; the metrics it names in metrics.py
(read with ``_baseline``, which makes them BASELINE_METRICS), and the ``BaselineStats`` fields its watch
fills in sample.py. tests/device/baseline/test_kinds.py checks that these agree.
"""

from __future__ import annotations

from ddcustom.device.baseline.kinds.endpoints import ENDPOINT
from ddcustom.device.baseline.kinds.executables import EXECUTABLE, GPU_EXECUTABLE
from ddcustom.device.baseline.kinds.kind import Kind
from ddcustom.device.baseline.kinds.listening import LISTENING
from ddcustom.device.baseline.kinds.program_code import PROGRAM_CODE
from ddcustom.device.baseline.kinds.program_levels import PROGRAM_CPU, PROGRAM_GPU
from ddcustom.device.baseline.kinds.program_network import PROGRAM_NETWORK

KINDS: tuple[Kind, ...] = (
    EXECUTABLE,
    GPU_EXECUTABLE,
    ENDPOINT,
    LISTENING,
    PROGRAM_CPU,
    PROGRAM_GPU,
    PROGRAM_CODE,
    PROGRAM_NETWORK,
)
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}

__all__ = [
    "BY_NAME",
    "ENDPOINT",
    "EXECUTABLE",
    "GPU_EXECUTABLE",
    "KINDS",
    "LISTENING",
    "PROGRAM_CODE",
    "PROGRAM_CPU",
    "PROGRAM_GPU",
    "PROGRAM_NETWORK",
    "Kind",
]

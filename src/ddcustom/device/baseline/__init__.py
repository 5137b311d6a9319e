"""The learned baseline of the device: what runs and talks here.

- kinds/: the kinds of items it holds (executable, gpu_executable, endpoint, listening), each declared
  once: its key, merge rule, ITEM form on the command line, the part of the observer specific to it, its
  metrics; ``KINDS`` is the registry everything below takes them from.
- observer.py: ``BaselineObserver``, what the agent calls every cycle: fills ``Sample.baseline``.
- store.py: ``BaselineStore``, the baseline shared by the component and the command line, in three parts:
  cycle.py (in memory: the per-cycle lookups and learning), sync.py (the merge with the file under the
  lock) and the operator's operations (store.py).
- file.py: the file format, lock and atomic writes.
- keys.py: the keys and address forms the kinds share.
- approvals.py: ``ApprovedExecutables`` / ``ApprovedEndpoints`` from the configuration.
- deployment.py: executables a Greengrass deployment placed.

The executable identities come from ddcustom.device.sources.identity; the command line is
ddcustom.cli.baseline (``ddcustom baseline show | approve | forget | relearn``).
"""

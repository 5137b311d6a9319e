"""The learned baseline of the device: what runs and talks here (issue 10).

- identity.py: ``IdentityReader.read(pid)`` -> ``ExecutableIdentity`` (exe path + SHA-256, and the
  script of an interpreter); unknowable when deleted, memfd or unreadable.
- keys.py: the kinds (executable, gpu_executable, endpoint, listening) and their keys.
- store.py: ``BaselineStore``, the baseline in memory and on disk, shared with the command line.
- storage.py: the file format, lock and atomic writes.
- approvals.py: ``ApprovedExecutables`` / ``ApprovedEndpoints`` from the configuration.
- deployment.py: executables a Greengrass deployment placed.
- cli.py: ``ddcustom baseline show | approve | forget | relearn``.
"""

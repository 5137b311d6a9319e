"""The ``ddcustom`` command: the device's commands, and the tooling's when it is installed."""

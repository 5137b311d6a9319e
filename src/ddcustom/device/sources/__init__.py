"""Sources: one module per kind of measurement; each produces a part of ``ddcustom.device.sample.Sample``."""

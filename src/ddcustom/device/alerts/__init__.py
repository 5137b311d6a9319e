"""What happens to an alert after detection: its evidence (redacted), the record of open alarms, the durable
spool."""

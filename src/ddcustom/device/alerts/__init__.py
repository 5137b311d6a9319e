"""What happens to an alert after detection: its evidence, the record of open alarms, the durable spool."""

"""The component that runs on the device: sources -> sample -> baseline -> detect -> alerts -> outputs,
run in order by the agent (docs/architecture.md)."""

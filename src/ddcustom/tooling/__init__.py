"""Operator and developer tooling, never run by the component: the cloud side, the stand-in nucleus,
plot, demo, dev and build."""

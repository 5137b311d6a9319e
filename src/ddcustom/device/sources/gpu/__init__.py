"""The GPU source and its two backends: NVML (NVIDIA dGPUs) and the Jetson GPU load in sysfs."""

"""Cryptojacking detection for AWS IoT Greengrass v2 GPU edge devices."""

__version__ = "1.0.0"
COMPONENT_NAME = "com.awsiotblog.DeviceDefenderCustom"

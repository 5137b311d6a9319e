"""Detection: Device Defender security profiles (the behavior language) evaluated on each Sample."""

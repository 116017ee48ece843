"""Training: augmentation, targets, losses, data and the trainer behind ``chs-train``."""

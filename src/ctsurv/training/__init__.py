"""Training: the Accelerate loop, the three stages, and checkpoints."""

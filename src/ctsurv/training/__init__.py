"""Training: the Accelerate loop, the three pretraining stages, checkpoints, and the survival stage."""

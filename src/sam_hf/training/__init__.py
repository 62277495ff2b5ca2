"""Training library: prompt simulation, data, losses and loops used by the training scripts."""

"""Training library: prompt simulation, dataset adapters, procedural data and LoRA setup used by the training scripts."""

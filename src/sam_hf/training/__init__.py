"""Training utilities: prompt simulation, dataset adapters, LoRA setup."""

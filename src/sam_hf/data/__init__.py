"""Data in and out of the package: the dataset reader shared by fine-tuning, evaluation and the data engine's
output, and the procedural datasets."""

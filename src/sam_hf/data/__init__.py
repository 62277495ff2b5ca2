"""Data in and out of the package: the one image rule (`images`), the RLE codec (`rle`), label-map images
(`label_maps`), the dataset reader shared by fine-tuning, evaluation and the data engine's output
(`reader`), and the procedural datasets (`synthetic`)."""

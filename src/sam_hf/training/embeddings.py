"""Image features computed once per dataset and cached on disk, for training with a frozen encoder.

The features are what the model's mask decoder needs of an image (`SamHFModel.image_feature_names`: the image
embedding, and for SAM-HQ the encoder's early feature too), one column each. The cache is an Arrow file per
(dataset, encoder weights, feature names, preprocessing) in `cache_dir`; a change in any of them gives a new
key, so stale features are never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch

from ..hub.loading import update_digest

__all__ = ["cache_image_embeddings", "embedding_cache_key"]


def embedding_cache_key(model: torch.nn.Module, processor: Any) -> str:
    """Hex digest of the image encoder's weights, the features cached (`model.image_feature_names`) and the
    processor's configuration."""
    described = {"processor": processor.to_dict(), "image_feature_names": list(model.image_feature_names)}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    update_digest(digest, model.image_encoder.state_dict())
    return digest.hexdigest()[:32]


def cache_image_embeddings(
    dataset,
    model: torch.nn.Module,
    processor: Any,
    cache_dir: str,
    image_column: str = "image",
    batch_size: int = 4,
):
    """`dataset` with a column per image feature the model's decoder needs, read from the cache if present:
    `image_embeddings` `(C, grid, grid)` and, for SAM-HQ, `intermediate_embeddings` `(grid, grid, D)`, float32
    (`model.image_feature_names`; `training.collator.SamTrainingCollator` reads them back).

    Args:
        dataset: a `datasets.Dataset` of usable rows (see `sam_hf.data.reader.load_segmentation_dataset`).
        model: a `SamHFModel` (or a PEFT wrapper of one); only its image encoder runs.
        processor: the `SamHFProcessor` used for training.
        cache_dir: folder of the cache files.
        image_column: column holding the images (read by the processor, `sam_hf.data.images.to_rgb`).
        batch_size: images per encoder pass.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = f"{dataset._fingerprint}-{embedding_cache_key(base, processor)}"
    os.makedirs(cache_dir, exist_ok=True)
    device = next(base.parameters()).device

    def encode(images: list) -> dict:
        # Only the image column is read: decoding mask columns to Python lists would dominate the time.
        pixel_values = processor.preprocess_images(list(images))[0].to(device)
        with torch.inference_mode():
            features = base.get_image_features(pixel_values)
        return {name: list(feature.float().cpu().numpy()) for name, feature in features.items()}

    cached = dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        input_columns=image_column,
        cache_file_name=os.path.join(cache_dir, f"embeddings-{key}.arrow"),
        new_fingerprint=key,
        load_from_cache_file=True,
        desc="Caching image features",
    )
    # features come back as tensors (fast), the other columns as they were
    return cached.with_format("torch", columns=list(base.image_feature_names), output_all_columns=True)

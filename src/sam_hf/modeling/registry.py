"""The image encoders SamHFModel can be built with, by name.

An encoder class registers under the `encoder_type` of its vision config section
(`configuration_sam_hf.VISION_CONFIG_CLASSES`), as timm's `register_model` registers an architecture:

    @register_image_encoder("vit")
    class ImageEncoderViT(nn.Module): ...

`build_image_encoder(vision_config)` builds the one its section names. An encoder takes
`(batch_size, num_channels, image_size, image_size)` normalised pixels and returns the image embedding
`(batch_size, output_channels, embedding_size, embedding_size)`, both sizes as its config section gives them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from transformers import PretrainedConfig

__all__ = ["build_image_encoder", "register_image_encoder"]

_IMAGE_ENCODERS: dict[str, type[nn.Module]] = {}


def register_image_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: build vision config sections whose `encoder_type` is `name` with this class."""

    def register(encoder_class: type[nn.Module]) -> type[nn.Module]:
        if _IMAGE_ENCODERS.setdefault(name, encoder_class) is not encoder_class:
            raise ValueError(
                f"image encoder {name!r} is registered already, as {_IMAGE_ENCODERS[name].__qualname__}"
            )
        return encoder_class

    return register


def build_image_encoder(vision_config: PretrainedConfig) -> nn.Module:
    """The image encoder `vision_config.encoder_type` names, built from `vision_config`."""
    encoder_type = getattr(vision_config, "encoder_type", None)
    if encoder_type not in _IMAGE_ENCODERS:
        raise ValueError(
            f"vision_config.encoder_type must be one of {sorted(_IMAGE_ENCODERS)}, got {encoder_type!r}"
        )
    return _IMAGE_ENCODERS[encoder_type](vision_config)

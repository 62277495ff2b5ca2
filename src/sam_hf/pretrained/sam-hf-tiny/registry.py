"""The image encoders and mask decoders SamHFModel can be built with, by name.

A component class registers under the type field of its config section, as timm's `register_model` registers
an architecture: an image encoder under its vision section's `encoder_type`
(`configuration_sam_hf.VISION_CONFIG_CLASSES`), a mask decoder under its decoder section's `decoder_type`
(`configuration_sam_hf.MASK_DECODER_CONFIG_CLASSES`):

    @register_image_encoder("vit")
    class ImageEncoderViT(ImageEncoderBase): ...

    @register_mask_decoder("hq")
    class MaskDecoderHQ(MaskDecoder): ...

`build_image_encoder(config)` and `build_mask_decoder(config)` build the ones a `SamHFConfig` names.

An image encoder takes its vision section; called on `(batch_size, num_channels, image_size, image_size)`
normalised pixels it returns the image embedding `(batch_size, output_channels, embedding_size,
embedding_size)`, and with `return_intermediate=True` also its early feature `(batch_size, embedding_size,
embedding_size, intermediate_channels)`. Its class attribute `stem_key` is a state-dict key only its official
checkpoints have, and its classmethod `config_from_state_dict(state_dict, shape)` reads its section's fields
from their tensor shapes (`checkpoint_conversion.infer_config_from_state_dict`).

A mask decoder takes the `SamHFConfig`; its class attribute `image_feature_names` names what it needs of the
image (`"image_embeddings"`, and `"intermediate_embeddings"` for SAM-HQ), which `SamHFModel` computes, caches
and passes; `state_key` (None for the default) tells its official checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = [
    "build_image_encoder",
    "build_mask_decoder",
    "image_encoder_classes",
    "mask_decoder_classes",
    "register_image_encoder",
    "register_mask_decoder",
]


class _Registry:
    """Classes by name, for the config field `field` (e.g. "vision_config.encoder_type")."""

    def __init__(self, what: str, field: str):
        self.what, self.field = what, field
        self.classes: dict[str, type[nn.Module]] = {}

    def register(self, name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
        def register(component_class: type[nn.Module]) -> type[nn.Module]:
            if self.classes.setdefault(name, component_class) is not component_class:
                raise ValueError(
                    f"{self.what} {name!r} is registered already, as {self.classes[name].__qualname__}"
                )
            return component_class

        return register

    def lookup(self, section: Any) -> type[nn.Module]:
        name = getattr(section, self.field.rsplit(".", 1)[1], None)
        if name not in self.classes:
            raise ValueError(f"{self.field} must be one of {sorted(self.classes)}, got {name!r}")
        return self.classes[name]


_IMAGE_ENCODERS = _Registry("image encoder", "vision_config.encoder_type")
_MASK_DECODERS = _Registry("mask decoder", "mask_decoder_config.decoder_type")


def register_image_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: build vision config sections whose `encoder_type` is `name` with this class."""
    return _IMAGE_ENCODERS.register(name)


def register_mask_decoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: build mask decoder config sections whose `decoder_type` is `name` with this class."""
    return _MASK_DECODERS.register(name)


def build_image_encoder(config: Any) -> nn.Module:
    """The image encoder `config.vision_config.encoder_type` names, built from the vision section."""
    return _IMAGE_ENCODERS.lookup(config.vision_config)(config.vision_config)


def build_mask_decoder(config: Any) -> nn.Module:
    """The mask decoder `config.mask_decoder_config.decoder_type` names, built from the whole config (a decoder
    may read the vision section, e.g. the early feature's channels)."""
    return _MASK_DECODERS.lookup(config.mask_decoder_config)(config)


def image_encoder_classes() -> dict[str, type[nn.Module]]:
    """The registered image encoder classes by `encoder_type`."""
    return dict(_IMAGE_ENCODERS.classes)


def mask_decoder_classes() -> dict[str, type[nn.Module]]:
    """The registered mask decoder classes by `decoder_type`."""
    return dict(_MASK_DECODERS.classes)

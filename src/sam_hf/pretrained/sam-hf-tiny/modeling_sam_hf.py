"""SamHFModel: Segment Anything as a `transformers` `PreTrainedModel`.

Parameter names follow Meta's released checkpoints (`image_encoder.*`, `prompt_encoder.*`,
`mask_decoder.*`), so `.pth` files load without renaming and LoRA target names match the official code.
All coordinates here are in the model frame: the `image_size x image_size` padded input the processor makes.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .checkpoint_io import HUB_KWARGS, ResolvedCheckpoint, load_foreign_checkpoint, resolve_checkpoint
from .common import FanInLinear, LayerNorm2d
from .configuration_sam_hf import SamHFConfig
from .image_encoder import ImageEncoderViT  # noqa: F401  (importing a component's module registers it)
from .image_frame import SAM_PIXEL_MEAN, SAM_PIXEL_STD, normalize_and_pad, upscale_masks
from .loss import sam_loss
from .mask_decoder import MaskDecoderHQ  # noqa: F401
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .registry import build_image_encoder, build_mask_decoder
from .tiny_vit import TinyViT  # noqa: F401

__all__ = ["SamHFModel", "SamHFOutput"]


@dataclass
class SamHFOutput(ModelOutput):
    """Output of `SamHFModel.forward`.

    Args:
        loss: scalar training loss (`sam_loss`), only when `labels` are given.
        pred_masks: `(batch_size, point_batch_size, num_masks, mask_size, mask_size)` float mask logits at low
            resolution (mask_size = 256 for SAM), in the padded model frame; num_masks is 3 with
            `multimask_output` and 1 without for SAM's decoder, always 1 for SAM-HQ's (`MaskDecoderHQ`).
        iou_scores: `(batch_size, point_batch_size, num_masks)` predicted IoU of each mask.
        image_embeddings: `(batch_size, channels, grid, grid)` image embeddings (256 x 64 x 64 for SAM),
            returned so callers can reuse them for further prompts.
        intermediate_embeddings: `(batch_size, grid, grid, intermediate_channels)` the image encoder's early
            feature, for a decoder that takes it (SAM-HQ); None otherwise. With `image_embeddings` these are the
            model's `image_feature_names`.
    """

    loss: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    iou_scores: torch.Tensor | None = None
    image_embeddings: torch.Tensor | None = None
    intermediate_embeddings: torch.Tensor | None = None


class SamHFPreTrainedModel(PreTrainedModel):
    config_class = SamHFConfig
    base_model_prefix = "sam_hf"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ImageEncoderBlock", "TinyViTBlock", "TwoWayAttentionBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # Transformer projections get the small ViT init; layers with no residual around them (convolutions,
        # `FanInLinear` in the hypernetwork and IoU MLPs) get fan-in scaling. With 0.02 everywhere the path to
        # the mask logits shrinks the signal ~1e5x (a fresh model's logits were constant to 1e-5) and a model
        # trained from scratch sat for ~400 steps predicting one constant logit everywhere.
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            if isinstance(module, FanInLinear):
                std = module.in_features**-0.5
            elif isinstance(module, nn.Conv2d):
                std = module.weight[0].numel() ** -0.5
            elif isinstance(module, nn.ConvTranspose2d):
                std = module.in_channels**-0.5  # kernel == stride here: in_channels inputs per output pixel
            else:
                std = self.config.initializer_range
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, LayerNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, PositionEmbeddingRandom):
            init.normal_(module.positional_encoding_gaussian_matrix, std=1.0)
        # A component's own parameters (position tables, attention biases) are initialised in its room.
        if hasattr(module, "_init_sam_hf_weights"):
            module._init_sam_hf_weights()


def shipped_model_folder(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The package folder of a shipped model name (`"sam-hf-tiny"`); anything else, or an existing local path of
    that name, is returned unchanged. Without the `sam_hf` package (this code copied next to weights for
    `trust_remote_code`) there are no shipped models."""
    if os.path.exists(name_or_path):
        return name_or_path
    try:  # looked up at run time: these files must import without the package
        pretrained = importlib.import_module("sam_hf.pretrained")
    except ImportError:
        return name_or_path
    folder = pretrained.shipped_model_path(name_or_path)
    return name_or_path if folder is None else str(folder)


class SamHFModel(SamHFPreTrainedModel):
    """SAM: image encoder, prompt encoder and mask decoder, under the official `Sam`'s submodule names.

    Besides transformers' `forward`, it has the official `Sam`'s end-to-end call, `model(batched_input,
    multimask_output=...)` (see `forward`), with its `preprocess`, `postprocess_masks`, `pixel_mean` and
    `pixel_std`.

    Attributes:
        mask_threshold: logit above which a pixel belongs to a mask (0.0, as official `Sam.mask_threshold`);
            `SamPredictor` and `SamAutomaticMaskGenerator` binarise with it.
        image_format: channel order the model expects, "RGB" (official `Sam.image_format`).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, config: SamHFConfig):
        super().__init__(config)
        self.image_encoder = build_image_encoder(config)
        self.prompt_encoder = PromptEncoder(
            config.prompt_encoder_config, config.image_embedding_size, config.image_size
        )
        self.mask_decoder = build_mask_decoder(config)
        self.post_init()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any
    ) -> SamHFModel:
        """Load any SAM checkpoint: a local path or a Hub repo id in one of three formats.

        - sam_hf folders/repos (config.json with model_type "sam_hf"): the usual transformers loading, every
          `PreTrainedModel.from_pretrained` argument applies.
        - transformers SAM and SAM-HQ folders/repos (facebook/sam-vit-base, syscv-community/sam-hq-vit-base, ...;
          model_type "sam" or "sam_hq"): the config is translated, parameters renamed
          (`checkpoint_conversion.from_transformers_state_dict`).
        - the name of a model shipped inside the `sam_hf` package (`"sam-hf-tiny"`), unless a local path of
          that name exists.
        - official state dict files (Meta's sam_vit_b_01ec64.pth, ..., MobileSAM's mobile_sam.pt, SAM-HQ's
          sam_hq_vit_b.pth, ...): the image encoder and the mask decoder are told by the keys, the architecture
          read from tensor shapes; pass `config=` for a model whose decoder does not have SAM's 8 heads.
        - a `checkpoint_io.ResolvedCheckpoint`, what `resolve_checkpoint` found for one of these (as
          `sam_hf.hub.load_model` passes it): it is not resolved again.

        For transformers SAM checkpoints and official files, `config`, `dtype` (a torch dtype, its name, or
        "auto" to keep the checkpoint's) and the Hub arguments (`revision`, `token`, `cache_dir`, ...) are
        accepted; a `.pth` stored in a Hub repo is read
        after `huggingface_hub.hf_hub_download`. Weights load strictly: a checkpoint with missing, extra or
        mis-shaped tensors raises ValueError listing them; pickles are read with `weights_only=True` only.
        """
        if pretrained_model_name_or_path is None:  # transformers' config= + state_dict= loading
            return super().from_pretrained(None, *model_args, **kwargs)
        if isinstance(pretrained_model_name_or_path, ResolvedCheckpoint):  # resolved once, by the caller
            checkpoint = pretrained_model_name_or_path
            location = pretrained_model_name_or_path = checkpoint.source
        else:
            location = shipped_model_folder(pretrained_model_name_or_path)
            checkpoint = resolve_checkpoint(location, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs})
        if checkpoint.format == "sam_hf":
            model = super().from_pretrained(location, *model_args, **kwargs)
        else:
            former_dtype_name = kwargs.pop("torch_dtype", None)
            config, dtype = kwargs.pop("config", None), kwargs.pop("dtype", None) or former_dtype_name
            unsupported = sorted(set(kwargs) - set(HUB_KWARGS)) + (["*model_args"] if model_args else [])
            if unsupported:
                raise TypeError(
                    f"from_pretrained of a {checkpoint.format} checkpoint accepts config, dtype and "
                    f"{HUB_KWARGS}, got {unsupported}"
                )
            model = load_foreign_checkpoint(cls, checkpoint, config, dtype)
        if location is not pretrained_model_name_or_path:
            # A shipped model is named by its name, not by the installing machine's package folder: PEFT
            # records `name_or_path` as an adapter's base, and the name resolves on every machine.
            model.name_or_path = model.config.name_or_path = os.fspath(pretrained_model_name_or_path)
        return model

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch_size, 3, image_size, image_size)` normalised pixels -> `(batch_size, C, grid, grid)` embeddings.

        Runs in the image encoder's dtype, so `model.image_encoder.to(torch.bfloat16)` gives a bf16 encoder in
        front of a float32 decoder. A decoder that needs more of the image (SAM-HQ): `get_image_features`.
        """
        return self.image_encoder(pixel_values.to(self.image_encoder_dtype))

    @property
    def image_feature_names(self) -> tuple[str, ...]:
        """What the mask decoder needs of an image, as `forward` and `SamHFOutput` name it: `("image_embeddings",)`
        for SAM, also `"intermediate_embeddings"` for SAM-HQ. What caches the image (the predictor, the
        automatic mask generator, fine-tuning's cached embeddings) keeps these."""
        return self.mask_decoder.image_feature_names

    def get_image_features(
        self, pixel_values: torch.Tensor, image_encoder: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        """`(batch_size, 3, image_size, image_size)` normalised pixels -> the image features the decoder needs,
        by name (`image_feature_names`), each batch-first: `image_embeddings` `(batch_size, C, grid, grid)` and,
        for SAM-HQ, `intermediate_embeddings` `(batch_size, grid, grid, intermediate_channels)`; pass them to
        `forward` as keyword arguments.

        Args:
            pixel_values: normalised and padded images, as `SamHFProcessor` makes them.
            image_encoder: run this copy of the model's image encoder instead (e.g. one cast to bf16); the
                pixels are cast to its dtype, as to the model's own encoder's.
        """
        encoder = self.image_encoder if image_encoder is None else image_encoder
        pixel_values = pixel_values.to(next(encoder.parameters()).dtype)
        if "intermediate_embeddings" not in self.image_feature_names:
            return {"image_embeddings": encoder(pixel_values)}
        embeddings, intermediate = encoder(pixel_values, return_intermediate=True)
        return {"image_embeddings": embeddings, "intermediate_embeddings": intermediate}

    @property
    def image_encoder_dtype(self) -> torch.dtype:
        """The dtype of the image encoder's parameters, which may differ from the decoder's."""
        return next(self.image_encoder.parameters()).dtype

    @property
    def pixel_mean(self) -> torch.Tensor:
        """`(3, 1, 1)` SAM's RGB mean on the 0-255 scale, on the model's device (official `Sam.pixel_mean`)."""
        return torch.tensor(SAM_PIXEL_MEAN, device=self.device).view(-1, 1, 1)

    @property
    def pixel_std(self) -> torch.Tensor:
        """`(3, 1, 1)` SAM's RGB std on the 0-255 scale, on the model's device (official `Sam.pixel_std`)."""
        return torch.tensor(SAM_PIXEL_STD, device=self.device).view(-1, 1, 1)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """`(3, h, w)` RGB on the 0-255 scale, longest side resized to `image_size` -> normalised and padded
        `(3, image_size, image_size)` float32, as official `Sam.preprocess` (SAM's statistics; a model saved with
        other statistics: use its `SamHFProcessor`)."""
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"x must be a (3, h, w) RGB image tensor, got shape {tuple(x.shape)}")
        return normalize_and_pad(x[None], self.config.image_size, SAM_PIXEL_MEAN, SAM_PIXEL_STD)[0]

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """`(B, C, mask_size, mask_size)` logits -> `(B, C, H, W)` float32 logits at `original_size` `(H, W)`,
        the padding beyond `input_size` (the resized image's `(h, w)`) removed, as official
        `Sam.postprocess_masks`."""
        return upscale_masks(masks, self.config.image_size, input_size, original_size)

    def forward(
        self,
        pixel_values: torch.Tensor | list[dict[str, Any]] | None = None,
        image_embeddings: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
        multimask_output: bool = True,
        labels: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        reshaped_input_sizes: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        intermediate_embeddings: torch.Tensor | None = None,
        hq_token_only: bool = False,
    ) -> SamHFOutput:
        """Segment `point_batch_size` prompts on each of `batch_size` images.

        Args:
            pixel_values: `(batch_size, 3, image_size, image_size)` processed images; or give
            image_embeddings: `(batch_size, C, grid, grid)` from `get_image_features` (cached), with
            intermediate_embeddings: `(batch_size, grid, grid, intermediate_channels)` for SAM-HQ's decoder.
            input_points: `(batch_size, point_batch_size, num_points, 2)` XY in the model frame.
            input_labels: `(batch_size, point_batch_size, num_points)`: 1 foreground, 0 background,
                -1 not-a-point, 2/3 box corners, -10 padding (masked out).
            input_boxes: `(batch_size, point_batch_size, 4)` XYXY in the model frame; a NaN row means no box.
            input_masks: `(batch_size, point_batch_size, mask_size, mask_size)` low-resolution mask logits,
                e.g. `pred_masks` of an earlier call.
            multimask_output: three masks per prompt (for ambiguous prompts) instead of one; SAM-HQ returns the
                best of the three plus its HQ mask.
            hq_token_only: SAM-HQ's HQ mask alone (official `hq_token_only`); ValueError for SAM's decoder.
            labels: `(batch_size, point_batch_size, mask_size, mask_size)` target masks; gives `loss`.
            original_sizes: `(batch_size, 2)`,
            reshaped_input_sizes: `(batch_size, 2)` and
            prompt_mask: `(batch_size, point_batch_size)`: processor outputs for post-processing, unused here,
                accepted so that `model(**processor(...))` works.

        Any other keyword raises `TypeError` naming it (a misspelt prompt must not run unprompted).

        The official `Sam.forward(batched_input, multimask_output)` runs when `pixel_values` is a list (one dict
        per image, as in the official predictor notebook's batched section), under `torch.inference_mode()`:
            - `image`: `(3, h, w)` RGB tensor on the 0-255 scale, longest side already resized to `image_size`
              (`ResizeLongestSide(model.image_encoder.img_size).apply_image`, then `permute(2, 0, 1)`);
            - `original_size`: `(H, W)` of the image before resizing;
            - optional prompts in the resized frame: `point_coords` `(B, N, 2)` XY with `point_labels` `(B, N)`,
              `boxes` `(B, 4)` XYXY, `mask_inputs` `(B, 1, mask_size, mask_size)` logits.
        It returns one dict per image: `masks` `(B, C, H, W)` bool at `original_size`, `iou_predictions`
        `(B, C)`, `low_res_logits` `(B, C, mask_size, mask_size)`; `C` is 3 with `multimask_output`, else 1.
        """
        if isinstance(pixel_values, list):
            if isinstance(image_embeddings, bool):  # official positional call: model(batched_input, False)
                multimask_output = image_embeddings
            return self._forward_batched_input(pixel_values, multimask_output, hq_token_only)
        features = self._image_features(pixel_values, image_embeddings, intermediate_embeddings)
        batch_size = features["image_embeddings"].shape[0]
        points, point_labels, boxes, masks, point_batch = self._flatten_prompts(
            batch_size, input_points, input_labels, input_boxes, input_masks
        )
        sparse, token_mask, dense = self.prompt_encoder(
            points, point_labels, boxes, masks, batch_size * point_batch
        )
        decoder_dtype = self.mask_decoder.iou_token.weight.dtype
        pred_masks, iou_scores = self.mask_decoder(
            {name: feature.to(decoder_dtype) for name, feature in features.items()},
            self.prompt_encoder.get_dense_pe().to(decoder_dtype),
            sparse.to(decoder_dtype),
            token_mask,
            dense.to(decoder_dtype),
            multimask_output,
            hq_token_only,
            point_batch,
        )
        pred_masks = pred_masks.reshape(batch_size, point_batch, *pred_masks.shape[1:])
        iou_scores = iou_scores.reshape(batch_size, point_batch, -1)
        loss = sam_loss(pred_masks.float(), iou_scores.float(), labels) if labels is not None else None
        return SamHFOutput(loss=loss, pred_masks=pred_masks, iou_scores=iou_scores, **features)

    def _image_features(
        self,
        pixel_values: torch.Tensor | None,
        image_embeddings: torch.Tensor | None,
        intermediate_embeddings: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The decoder's image features, computed from `pixel_values` or given (cached), checked by name."""
        given = {"image_embeddings": image_embeddings, "intermediate_embeddings": intermediate_embeddings}
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("pass exactly one of pixel_values or image_embeddings")
        if pixel_values is not None:
            if intermediate_embeddings is not None:
                raise ValueError("intermediate_embeddings come with image_embeddings, not with pixel_values")
            return self.get_image_features(pixel_values)
        names = self.image_feature_names
        missing = [name for name in names if given[name] is None]
        extra = [name for name, value in given.items() if value is not None and name not in names]
        if missing or extra:
            raise ValueError(
                f"this model's mask decoder ({self.config.mask_decoder_config.decoder_type!r}) takes the image "
                f"features {list(names)} (get_image_features gives them); "
                + (f"missing {missing}" if missing else f"{extra} given, which it does not take")
            )
        return {name: given[name] for name in names}

    def _forward_batched_input(
        self, batched_input: list[dict[str, Any]], multimask_output: bool, hq_token_only: bool
    ) -> list[dict[str, torch.Tensor]]:
        """The official `Sam.forward`: see `forward`."""
        for index, record in enumerate(batched_input):
            missing = {"image", "original_size"} - set(record) if isinstance(record, dict) else None
            if missing is None or missing:
                raise ValueError(
                    f"batched_input[{index}] must be a dict with 'image' and 'original_size' (and optional "
                    f"prompts), got {type(record).__name__ if missing is None else f'no {sorted(missing)}'}"
                )
        with torch.inference_mode():
            pixel_values = torch.stack([self.preprocess(record["image"]) for record in batched_input])
            features = self.get_image_features(pixel_values)
            outputs = []
            for index, record in enumerate(batched_input):
                points, boxes, masks = (record.get(k) for k in ("point_coords", "boxes", "mask_inputs"))
                prediction = self(
                    **{name: feature[index : index + 1] for name, feature in features.items()},
                    input_points=None if points is None else points[None],
                    input_labels=None if points is None else record["point_labels"][None],
                    input_boxes=None if boxes is None else boxes[None],
                    input_masks=None if masks is None else masks[:, 0][None],
                    multimask_output=multimask_output,
                    hq_token_only=hq_token_only,
                )
                low_res = prediction.pred_masks[0]  # (B, C, mask_size, mask_size)
                upscaled = self.postprocess_masks(
                    low_res, record["image"].shape[-2:], record["original_size"]
                )
                outputs.append(
                    {
                        "masks": upscaled > self.mask_threshold,
                        "iou_predictions": prediction.iou_scores[0],
                        "low_res_logits": low_res,
                    }
                )
        return outputs

    def _flatten_prompts(
        self,
        batch_size: int,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ):
        """Check prompt shapes and flatten `(batch_size, point_batch_size, ...)` to `(batch_size * point_batch_size, ...)`."""
        if (points is None) != (labels is None):
            raise ValueError("input_points and input_labels must be given together")
        mask_size = self.config.mask_size
        expected = {
            "input_points": (points, 4, "(batch_size, point_batch_size, num_points, 2)"),
            "input_labels": (labels, 3, "(batch_size, point_batch_size, num_points)"),
            "input_boxes": (boxes, 3, "(batch_size, point_batch_size, 4)"),
            "input_masks": (masks, 4, f"(batch_size, point_batch_size, {mask_size}, {mask_size})"),
        }
        point_batch = None
        for name, (tensor, ndim, form) in expected.items():
            if tensor is None:
                continue
            if tensor.dim() != ndim or tensor.shape[0] != batch_size:
                raise ValueError(
                    f"{name} must have shape {form} with batch_size={batch_size}, got {tuple(tensor.shape)}"
                )
            if point_batch is not None and tensor.shape[1] != point_batch:
                raise ValueError(
                    f"{name} has point_batch_size {tensor.shape[1]}, other prompts have {point_batch}"
                )
            point_batch = tensor.shape[1]
        if points is not None and (points.shape[-1] != 2 or labels.shape != points.shape[:-1]):
            raise ValueError(
                f"input_points must be (..., num_points, 2) and input_labels (..., num_points), "
                f"got {tuple(points.shape)} and {tuple(labels.shape)}"
            )
        if boxes is not None and boxes.shape[-1] != 4:
            raise ValueError(
                f"input_boxes must have shape (batch_size, point_batch_size, 4), got {tuple(boxes.shape)}"
            )
        if masks is not None and tuple(masks.shape[2:]) != (mask_size, mask_size):
            raise ValueError(
                f"input_masks must be low-resolution mask logits of shape (batch_size, point_batch_size, "
                f"{mask_size}, {mask_size}) such as pred_masks of a previous call, got {tuple(masks.shape)}"
            )
        point_batch = point_batch or 1
        flat = batch_size * point_batch
        if points is not None:
            points = points.reshape(flat, -1, 2).float()
            labels = labels.reshape(flat, -1).long()
        if boxes is not None:
            boxes = boxes.reshape(flat, 4).float()
        if masks is not None:
            masks = masks.reshape(flat, 1, mask_size, mask_size)
        return points, labels, boxes, masks, point_batch

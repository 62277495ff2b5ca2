"""SamPredictor: the official `segment_anything.SamPredictor` API on top of `SamHFModel`.

Encode an image once with `set_image`, then prompt it any number of times with `predict` (numpy, original
image pixels) or `predict_torch` (batched tensors already in the model frame). Argument names, shapes and
return types follow the official predictor, so existing code only changes its import.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..modeling.modeling_sam_hf import SamHFModel
from ..processing_sam_hf import SamHFProcessor, validate_boxes, validate_points

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["ResizeLongestSide", "SamPredictor"]


class SamPredictor:
    """Caches one image's embedding and predicts masks for prompts on it.

    Args:
        model: the `SamHFModel` to run, or a PEFT model wrapping one (its adapters apply); its device is
            used; call `.eval()` on it first if it was training. The predictor never modifies it.
        processor: image/prompt processor; built from `model.config` when None.
        encoder_dtype: run the image encoder in this dtype (`torch.bfloat16` is ~3x faster than float32 on
            CPUs with bf16 matrix units, and on GPUs). Unless the encoder already has that dtype, the
            predictor converts a copy of it, taken now (memory: the encoder's size in that dtype; build the
            predictor after moving or changing the model); the caller's model keeps its dtype. None runs
            the model's encoder as it is. Embeddings are cast back to float32; the prompt encoder and mask
            decoder keep their dtype.

    Attributes:
        transform: the official `predictor.transform` interface (`apply_image`, `apply_coords`,
            `apply_boxes` and their `_torch` variants) backed by the processor, for code written against it.
        image_features: the current image's features the decoder needs, by name (`model.image_feature_names`:
            `image_embeddings` `(1, C, grid, grid)`, and `intermediate_embeddings` for SAM-HQ), float32; None
            before `set_image`.
        features: `(1, C, grid, grid)` embedding of the current image (`image_features["image_embeddings"]`,
            the official attribute; None before `set_image`).
        original_size: `(H, W)` of the current image; input_size: `(H, W)` after resizing.
        is_image_set: whether an image has been encoded.
    """

    def __init__(
        self,
        model: SamHFModel | PeftModel,
        processor: SamHFProcessor | None = None,
        encoder_dtype: torch.dtype | None = None,
    ) -> None:
        if encoder_dtype is not None and not (
            isinstance(encoder_dtype, torch.dtype) and encoder_dtype.is_floating_point
        ):
            raise TypeError(f"encoder_dtype must be a floating torch.dtype or None, got {encoder_dtype!r}")
        self.model = model
        self.processor = (
            processor if processor is not None else SamHFProcessor.from_model_config(model.config)
        )
        self.encoder_dtype = encoder_dtype
        encoder = model.image_encoder
        self._converted_encoder = (
            copy.deepcopy(encoder).to(encoder_dtype)
            if encoder_dtype is not None and model.image_encoder_dtype != encoder_dtype
            else None
        )
        self.transform = ResizeLongestSide(self.processor.image_size, self.processor)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.image_features: dict[str, torch.Tensor] | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray | Image.Image, image_format: str = "RGB") -> None:
        """Encode an image so that masks can be predicted for it.

        Args:
            image: `(H, W, 3)` uint8 array as the official predictor, or anything `SamHFProcessor` accepts
                (PIL, grayscale, RGBA, uint16, float in [0, 1]).
            image_format: "RGB" or "BGR" (channel order of a numpy image, e.g. "BGR" for OpenCV).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format == "BGR":
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (3, 4)):
                raise ValueError(
                    f"image_format='BGR' needs an (H, W, 3) numpy image, got "
                    f"{getattr(image, 'shape', type(image).__name__)}"
                )
            image = image[..., [2, 1, 0]]
        pixel_values, original_sizes, reshaped_sizes = self.processor.preprocess_images(image)
        self._encode(pixel_values, tuple(original_sizes[0].tolist()), tuple(reshaped_sizes[0].tolist()))

    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Sequence[int]) -> None:
        """Encode an image already resized with its longest side equal to `image_size` (not normalised).

        Args:
            transformed_image: `(1, 3, h, w)` RGB on the 0-255 scale with `max(h, w) == image_size`.
            original_image_size: `(H, W)` of the image before resizing.
        """
        size = self.processor.image_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != size:
            raise ValueError(
                f"transformed_image must have shape (1, 3, h, w) with max(h, w) == {size} (resized, not "
                f"normalised), got {shape}"
            )
        if len(original_image_size) != 2:
            raise ValueError(f"original_image_size must be (H, W), got {tuple(original_image_size)}")
        pixel_values = self.processor.normalize_and_pad(transformed_image.to(self.device))
        self._encode(pixel_values, tuple(int(s) for s in original_image_size), shape[2:])

    def _encode(
        self, pixel_values: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
    ) -> None:
        self.reset_image()
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values.to(self.device), self._converted_encoder)
        # Normal (not inference-mode) float32 copies, so cached embeddings can feed decoder training.
        self.image_features = {name: feature.float().clone() for name, feature in features.items()}
        self.original_size = original_size
        self.input_size = input_size
        self.is_image_set = True

    @property
    def features(self) -> torch.Tensor | None:
        return None if self.image_features is None else self.image_features["image_embeddings"]

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the current image (coordinates in original-image pixels).

        Args:
            point_coords: `(N, 2)` XY pixel coordinates of point prompts.
            point_labels: `(N,)` labels: 1 foreground, 0 background (-1: SAM's "not a point" token).
            box: `(4,)` XYXY pixel box (or `(1, 4)`).
            mask_input: `(1, mask_size, mask_size)` low-resolution logits (256 for SAM), typically the
                `low_res_logits` of a previous call (one of its masks, e.g. `low_res_logits[[best]]`).
            multimask_output: return three masks (better for an ambiguous single click) instead of one.
            return_logits: return float logits instead of boolean masks (`logits > model.mask_threshold`).
            hq_token_only: SAM-HQ's option (as its official predictor): the HQ token's mask alone instead of
                it added to SAM's; ValueError for a model with SAM's decoder.

        Returns:
            masks `(C, H, W)` bool (float logits with `return_logits`), scores `(C,)` predicted IoU, and
            low-resolution logits `(C, mask_size, mask_size)`; C is 3 with `multimask_output`, else 1 (SAM-HQ:
            always 1, the best multimask output plus the HQ mask, as its official predictor).
        """
        self._require_image("mask prediction")
        coords = labels = boxes = masks = None
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            points, point_label_array = validate_points(
                point_coords, point_labels, self.original_size, "point_coords", "point_labels"
            )
            transformed = self.processor.transform_coords(points, self.original_size)
            coords = torch.as_tensor(transformed, dtype=torch.float, device=self.device)[None]
            labels = torch.as_tensor(point_label_array, device=self.device)[None]
        if box is not None:
            if np.shape(box) not in ((4,), (1, 4)):
                raise ValueError(f"box must be one XYXY box of shape (4,) or (1, 4), got {np.shape(box)}")
            box_array = validate_boxes(np.reshape(box, (1, 4)), "box")
            if np.isnan(box_array).any():
                raise ValueError(f"box must be finite XYXY pixels, got {box_array[0].tolist()}")
            transformed = self.processor.transform_boxes(box_array, self.original_size)
            boxes = torch.as_tensor(transformed, dtype=torch.float, device=self.device)  # (1, 4)
        if mask_input is not None:
            masks = torch.as_tensor(self._validated_mask_input(mask_input), device=self.device)[None]
        out_masks, scores, low_res = self.predict_torch(
            coords,
            labels,
            boxes,
            masks,
            multimask_output=multimask_output,
            return_logits=return_logits,
            hq_token_only=hq_token_only,
        )
        # numpy has no bfloat16: a reduced-precision model's scores and logits come back as float32.
        scores, low_res = scores[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()
        return out_masks[0].cpu().numpy(), scores, low_res

    def _validated_mask_input(self, mask_input: np.ndarray) -> np.ndarray:
        size = self.processor.mask_size
        array = np.asarray(mask_input)
        wanted = (
            f"mask_input must be low-resolution mask logits of shape (1, {size}, {size}) such as "
            f"low_res_logits[[i]] of a previous predict() call"
        )
        if array.shape != (1, size, size):
            hint = ""
            if self.original_size is not None and array.shape[-2:] == tuple(self.original_size):
                hint = (
                    " (a full-size mask: prompt with a box around it, or make logits with "
                    "20 * processor.mask_to_label(mask) - 10)"
                )
            raise ValueError(f"{wanted}, got shape {array.shape}{hint}")
        if array.dtype == bool or (array.dtype.kind in "iu") or np.isin(array, (0, 1)).all():
            raise ValueError(
                f"{wanted}, got a binary mask (dtype {array.dtype}); pass logits, not 0/1 values "
                f"(e.g. 20 * mask - 10 for a 0/1 mask already in the low-resolution model frame)"
            )
        return array.astype(np.float32)

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict masks for a batch of `B` prompts already in the model frame (see `processor.transform_coords`).

        Args:
            point_coords: `(B, N, 2)` XY model-frame coordinates, or None.
            point_labels: `(B, N)` labels (1 foreground, 0 background, -1 not a point, -10 padding).
            boxes: `(B, 4)` XYXY model-frame boxes, or None.
            mask_input: `(B, 1, mask_size, mask_size)` low-resolution logits, or None.
            multimask_output: three masks per prompt instead of one.
            return_logits: return float logits instead of boolean masks (`logits > model.mask_threshold`).
            hq_token_only: SAM-HQ's option (as its official predictor): the HQ token's mask alone instead of
                it added to SAM's; ValueError for a model with SAM's decoder.

        Returns:
            masks `(B, C, H, W)` (original image size), scores `(B, C)`, low-resolution logits
            `(B, C, mask_size, mask_size)`.
        """
        self._require_image("mask prediction")
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        expected = {
            "point_coords": (point_coords, 3, "(B, N, 2)"),
            "point_labels": (point_labels, 2, "(B, N)"),
            "boxes": (boxes, 2, "(B, 4)"),
            "mask_input": (mask_input, 4, f"(B, 1, {self.processor.mask_size}, {self.processor.mask_size})"),
        }
        for name, (tensor, ndim, form) in expected.items():
            if tensor is not None and (not isinstance(tensor, torch.Tensor) or tensor.dim() != ndim):
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{name} must be a tensor of shape {form}, got {got}")
        if mask_input is not None and mask_input.shape[1] != 1:
            raise ValueError(
                f"mask_input must have shape (B, 1, mask_size, mask_size), got {tuple(mask_input.shape)}"
            )
        with torch.inference_mode():
            outputs = self.model(
                **self.image_features,
                input_points=None if point_coords is None else point_coords[None],
                input_labels=None if point_labels is None else point_labels[None],
                input_boxes=None if boxes is None else boxes[None],
                input_masks=None if mask_input is None else mask_input[:, 0][None],
                multimask_output=multimask_output,
                hq_token_only=hq_token_only,
            )
            low_res = outputs.pred_masks[0]  # (B, C, mask_size, mask_size)
            masks = self.processor.upscale_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, outputs.iou_scores[0], low_res

    def get_image_embedding(self) -> torch.Tensor:
        """`(1, C, grid, grid)` embedding of the current image (C=256, grid=64 for SAM); all the features the
        decoder takes are `image_features`."""
        self._require_image("an embedding")
        return self.features

    def _require_image(self, purpose: str) -> None:
        if not self.is_image_set:
            raise RuntimeError(f"An image must be set with .set_image(...) before {purpose}.")


class ResizeLongestSide:
    """The official `segment_anything.utils.transforms.ResizeLongestSide`, backed by `SamHFProcessor` (the home of
    the resizing and coordinate arithmetic): resize images so that their longest side is `target_length`, and
    map XY pixel coordinates and XYXY boxes into the resized frame.

    Also importable as `sam_hf.utils.transforms.ResizeLongestSide`, the official path. `SamPredictor.transform`
    is one, built on the predictor's processor.

    Args:
        target_length: the model's input side (`model.config.image_size`).
        processor: the processor whose frame to use (its `image_size` must be `target_length`); by default one
            with SAM's settings (its mask size plays no part in these transforms).

    Raises:
        ValueError: `processor.image_size` differs from `target_length`.
    """

    def __init__(self, target_length: int, processor: SamHFProcessor | None = None) -> None:
        if processor is None:
            processor = SamHFProcessor(image_size=target_length, mask_size=target_length)
        if processor.image_size != target_length:
            raise ValueError(
                f"processor.image_size must equal target_length, got {processor.image_size} and {target_length}"
            )
        self.processor = processor
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """`(oldh, oldw)` after resizing the longest side to `long_side_length` (rounded as official SAM)."""
        return ResizeLongestSide(long_side_length).processor.get_preprocess_shape(oldh, oldw)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """`(H, W, 3)` uint8 image -> resized `(h, w, 3)` uint8 (PIL bilinear), longest side `target_length`."""
        return self.processor.resize_image(image)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` float images -> `(B, C, h, w)`, longest side `target_length`: bilinear with
        antialiasing, as official `apply_image_torch` means to (close to `apply_image`, not equal to it). The
        official method computes the size from dims `(B, C)` instead of `(H, W)`
        (facebookresearch/segment-anything#218); this one uses `(H, W)`."""
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (B, C, H, W) float tensor, got {got}")
        size = self.processor.get_preprocess_shape(*image.shape[-2:])
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords(
        self, coords: np.ndarray | torch.Tensor, original_size: Sequence[int]
    ) -> np.ndarray | torch.Tensor:
        """`(..., 2)` XY pixels of an image of `original_size` `(H, W)` -> the resized frame."""
        return self.processor.transform_coords(coords, original_size)

    def apply_boxes(
        self, boxes: np.ndarray | torch.Tensor, original_size: Sequence[int]
    ) -> np.ndarray | torch.Tensor:
        """XYXY pixel boxes of an image of `original_size` `(H, W)` -> `(B, 4)` XYXY in the resized frame."""
        return self.processor.transform_boxes(boxes, original_size).reshape(-1, 4)

    apply_coords_torch = apply_coords
    apply_boxes_torch = apply_boxes

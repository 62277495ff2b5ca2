"""SamHFProcessor: images and prompts in, model-frame tensors out; low-resolution logits back to image masks.

The model frame is the `image_size x image_size` square the encoder sees: the image resized so its
longest side is `image_size` (output size rounded as official `ResizeLongestSide`, PIL bilinear
resampling as official SAM and transformers' `SamImageProcessorPil`), normalised with SAM's mean/std
(0-255 scale) and zero-padded at the bottom and right. Prompts are given in original-image pixels (XY)
and scaled per axis by `new_w / old_w` and `new_h / old_h`.

Images (one image, or a list of images of any sizes) are read by `sam_hf.data.images.to_rgb`, the
package's one rule: a path (EXIF orientation applied), a PIL image of any mode or a numpy array
`(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` of dtype uint8, uint16 (scaled by 255 / 65535), bool or
float in [0, 1] (scaled by 255), rounded to `(H, W, 3)` uint8 RGB. An image whose short side would resize
to 0 px (aspect ratio beyond `2 * image_size : 1`) is refused.

(Over 400 lines: one class with transformers' processor contract, images in, prompts in, masks out and the
config's save/load, kept together as transformers keeps `SamProcessor`; image decoding is `sam_hf.data.images`
and prompt padding `sam_hf.prompting.batching`.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .images import IMAGE_FORMS, to_rgb
from .checkpoint_io import ResolvedCheckpoint, hub_cache_miss
from .image_frame import SAM_PIXEL_MEAN, SAM_PIXEL_STD, normalize_and_pad, upscale_masks
from .modeling_sam_hf import shipped_model_folder
from .batching import pad_points

__all__ = [
    "PROCESSOR_AUTO_CLASSES",
    "PROCESSOR_CONFIG_NAME",
    "SamHFProcessor",
    "validate_boxes",
    "validate_points",
]

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
_TRANSFORMERS_PROCESSOR_CONFIG_NAME = "processor_config.json"
# The transformers Auto classes that resolve to this class (`sam_hf/__init__.py` registers it with both).
PROCESSOR_AUTO_CLASSES = ("AutoProcessor", "AutoImageProcessor")
# What `from_pretrained` passes on to the Hub download; the Auto classes add `_from_auto`, `trust_remote_code`.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
_VALID_POINT_LABELS = (1, 0, -1)
# The saved fields, the arguments of `SamHFProcessor.__init__`.
_FIELDS = ("image_size", "mask_size", "pixel_mean", "pixel_std")

ImageLike = str | os.PathLike | Image.Image | np.ndarray


class SamHFProcessor(BaseImageProcessor):
    """Prepares images and prompts for `SamHFModel` and maps its masks back to the images.

    It is both the processor and the image processor of a sam_hf model: `AutoProcessor.from_pretrained` and
    `AutoImageProcessor.from_pretrained` give it for a saved model once `sam_hf` is imported, and with
    `trust_remote_code=True` where it is not (its `save_pretrained` writes its source and `auto_map`).
    transformers' `BaseImageProcessor` is its base for that registration only: none of its preprocessing
    methods are used.

    Args:
        image_size: side of the square model frame (1024 for SAM); the longest image side is resized to it.
        mask_size: side of the low-resolution mask logits the model predicts and accepts (256 for SAM).
        pixel_mean: per-channel mean subtracted from RGB pixels on the 0-255 scale.
        pixel_std: per-channel std dividing RGB pixels on the 0-255 scale.
    """

    def __init__(
        self,
        image_size: int = 1024,
        mask_size: int = 256,
        pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
        pixel_std: Sequence[float] = SAM_PIXEL_STD,
    ):
        for name, value in (("image_size", image_size), ("mask_size", mask_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if image_size % mask_size:
            raise ValueError(
                f"image_size must be a multiple of mask_size, got image_size={image_size}, mask_size={mask_size}"
            )
        for name, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {list(value)}")
        if min(pixel_std) <= 0:
            raise ValueError(f"pixel_std must be positive, got {list(pixel_std)}")
        super().__init__()
        self.image_size = image_size
        self.mask_size = mask_size
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)}' for k in _FIELDS)})"

    # ------------------------------------------------------------------ construction and serialisation

    @classmethod
    def from_model_config(cls, config: Any) -> SamHFProcessor:
        """The processor matching a `SamHFConfig` (its image size and mask size; SAM's pixel statistics)."""
        return cls(image_size=config.image_size, mask_size=config.mask_size)

    def to_dict(self) -> dict[str, Any]:
        """The saved configuration: this class's fields, its class name under the keys transformers' Auto
        classes read, and `auto_map` naming its module for `trust_remote_code`."""
        name = type(self).__name__
        return {
            "processor_class": name,
            "image_processor_type": name,
            "auto_map": dict.fromkeys(PROCESSOR_AUTO_CLASSES, f"{_module_file_stem(type(self))}.{name}"),
            "image_size": self.image_size,
            "mask_size": self.mask_size,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
        }

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: Any = None) -> str:
        """Write `preprocessor_config.json` and this module's source (with the modules it imports, for
        `trust_remote_code=True`) into `save_directory`, created if missing; returns the config's path.
        `max_shard_size` is what transformers' `push_to_hub` passes, unused: there are no weights."""
        from .remote_code import save_remote_code

        save_remote_code(type(self).__module__, save_directory)
        path = os.path.join(save_directory, PROCESSOR_CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | ResolvedCheckpoint, **kwargs: Any
    ) -> SamHFProcessor:
        """Load from a folder or Hub repo holding a `SamHFProcessor` or a transformers `SamProcessor` config.

        Reads `preprocessor_config.json` (ours, or transformers' `SamImageProcessor` one) or, failing that,
        transformers' `processor_config.json`. transformers stores the mean/std on the [0, 1] scale and the
        sizes as `size.longest_edge` / `mask_size.longest_edge`; they are mapped to this class's fields.

        Args:
            pretrained_model_name_or_path: local folder, Hub repo id or shipped model name (`"sam-hf-tiny"`),
                or the `ResolvedCheckpoint` found for one (as `sam_hf.hub.load_model` passes it), not resolved
                again.
            kwargs: `cache_dir`, `revision`, `token`, ... passed to `huggingface_hub.hf_hub_download` for Hub
                repos; the rest go to `from_dict` (field overrides, `return_unused_kwargs`), which ignores
                `trust_remote_code` and the other arguments transformers' Auto classes pass.
        """
        if isinstance(pretrained_model_name_or_path, ResolvedCheckpoint):
            location = pretrained_model_name_or_path.source
        else:
            location = os.fspath(shipped_model_folder(pretrained_model_name_or_path))
        config = _read_processor_config(location, {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs})
        return cls.from_dict(config, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> SamHFProcessor:
        """The processor a saved config describes: what `to_dict` wrote, or a transformers `SamImageProcessor`
        or `SamProcessor` config (mapped as in `from_pretrained`). `AutoImageProcessor.from_pretrained` reads
        the file and calls this.

        Args:
            config_dict: the contents of `preprocessor_config.json` or `processor_config.json`.
            kwargs: `image_size`, `mask_size`, `pixel_mean` or `pixel_std` override the saved values;
                `return_unused_kwargs=True` returns `(processor, the other kwargs)`; other kwargs (what the
                Auto classes pass on) are ignored.
        """
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        if "image_processor" in config_dict:  # transformers processor_config.json nests the image processor
            config_dict = config_dict["image_processor"]
        if config_dict.get("image_processor_type") == cls.__name__:
            fields = {k: config_dict[k] for k in _FIELDS}
        else:
            fields = _from_transformers_config(config_dict)
        processor = cls(**{**fields, **{k: kwargs.pop(k) for k in _FIELDS if k in kwargs}})
        return (processor, kwargs) if return_unused_kwargs else processor

    def to_transformers(self) -> Any:
        """transformers' `SamProcessor` with this processor's frame: `size.longest_edge` and `pad_size` are
        `image_size`, `mask_size` is `mask_size`, and the mean/std are on transformers' [0, 1] scale. Its
        `save_pretrained` writes what `SamProcessor.from_pretrained` and transformers' mask-generation pipeline
        read beside a transformers SAM checkpoint (`sam_hf.modeling.checkpoint_io.save_transformers_checkpoint`)."""
        from transformers import SamImageProcessor, SamProcessor

        image, mask = self.image_size, self.mask_size
        return SamProcessor(
            image_processor=SamImageProcessor(
                size={"longest_edge": image},
                pad_size={"height": image, "width": image},
                mask_size={"longest_edge": mask},
                mask_pad_size={"height": mask, "width": mask},
                image_mean=[v / 255 for v in self.pixel_mean],
                image_std=[v / 255 for v in self.pixel_std],
            )
        )

    # ------------------------------------------------------------------ images

    def get_preprocess_shape(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` after resizing the longest side to `image_size`, rounded as official SAM."""
        scale = self.image_size * 1.0 / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def preprocess_images(
        self, images: ImageLike | Sequence[ImageLike]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resize, normalise and pad images.

        Args:
            images: one image or a list of images (see the module docstring for accepted forms).

        Returns:
            `pixel_values (batch_size, 3, image_size, image_size)` float32, `original_sizes (batch_size, 2)`
            and `reshaped_input_sizes (batch_size, 2)` int64 as `(H, W)`.
        """
        resized, original_sizes, reshaped_sizes = [], [], []
        for index, image in enumerate(_as_image_list(images)):
            name = f"images[{index}]" + (
                f" ({os.fspath(image)})" if isinstance(image, (str, os.PathLike)) else ""
            )
            array = to_rgb(image, name)
            resized.append(self._resize(array, name))
            original_sizes.append(array.shape[:2])
            reshaped_sizes.append(resized[-1].shape[:2])
        pixel_values = torch.cat(
            [self.normalize_and_pad(torch.from_numpy(r).permute(2, 0, 1)[None]) for r in resized]
        )
        return pixel_values, torch.tensor(original_sizes), torch.tensor(reshaped_sizes)

    def resize_image(self, image: ImageLike) -> np.ndarray:
        """One image -> `(h, w, 3)` uint8 RGB with its longest side resized to `image_size`, as official
        `ResizeLongestSide.apply_image`."""
        return self._resize(to_rgb(image, "image"), "image")

    def _resize(self, image: np.ndarray, name: str) -> np.ndarray:
        """PIL bilinear resize of `(H, W, 3)` uint8, as official SAM; `name` is the image in error messages."""
        height, width = self.get_preprocess_shape(*image.shape[:2])
        if min(height, width) == 0:
            raise ValueError(
                f"{name} is {image.shape[0]}x{image.shape[1]} (HxW) and its short side would resize to 0 px "
                f"at image_size={self.image_size}; the long side may be at most {2 * self.image_size} times "
                "the short side (crop or pad the image)"
            )
        return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))

    def normalize_and_pad(self, resized_images: torch.Tensor) -> torch.Tensor:
        """`(batch_size, 3, h, w)` resized RGB on the 0-255 scale (any dtype) -> normalised, zero-padded
        `(batch_size, 3, image_size, image_size)` float32 (bottom/right padding, as official SAM)."""
        if resized_images.dim() != 4 or resized_images.shape[1] != 3:
            raise ValueError(
                f"resized_images must have shape (batch_size, 3, h, w), got {tuple(resized_images.shape)}"
            )
        height, width = resized_images.shape[-2:]
        if max(height, width) > self.image_size:
            raise ValueError(
                f"resized_images must fit in {self.image_size}x{self.image_size}, got {height}x{width}"
            )
        return normalize_and_pad(resized_images, self.image_size, self.pixel_mean, self.pixel_std)

    # ------------------------------------------------------------------ prompts

    def transform_coords(
        self, coords: np.ndarray | torch.Tensor | Sequence, original_size: Sequence[int]
    ) -> np.ndarray | torch.Tensor:
        """Map `(..., 2)` XY pixel coordinates of an image of `original_size (H, W)` to the model frame.

        As official `apply_coords` (a float64 numpy array for array-like input) and `apply_coords_torch`
        (a float32 tensor for tensor input), bit for bit.
        """
        old_h, old_w = _as_size(original_size, "original_size")
        new_h, new_w = self.get_preprocess_shape(old_h, old_w)
        if isinstance(coords, torch.Tensor):
            coords = coords.float()
        else:
            coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim == 0 or coords.shape[-1] != 2:
            raise ValueError(f"coords must have shape (..., 2) as XY, got {tuple(coords.shape)}")
        scaled = coords.clone() if isinstance(coords, torch.Tensor) else coords.copy()
        scaled[..., 0] = coords[..., 0] * (new_w / old_w)
        scaled[..., 1] = coords[..., 1] * (new_h / old_h)
        return scaled

    def transform_boxes(
        self, boxes: np.ndarray | torch.Tensor | Sequence, original_size: Sequence[int]
    ) -> np.ndarray | torch.Tensor:
        """Map `(..., 4)` XYXY pixel boxes to the model frame (both corners as in `transform_coords`)."""
        if not isinstance(boxes, torch.Tensor):
            boxes = np.asarray(boxes, dtype=np.float64)
        shape = tuple(boxes.shape)
        if len(shape) == 0 or shape[-1] != 4:
            raise ValueError(f"boxes must have shape (..., 4) as XYXY, got {shape}")
        corners = boxes.reshape(*shape[:-1], 2, 2)
        return self.transform_coords(corners, original_size).reshape(shape)

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        input_points: Sequence | None = None,
        input_labels: Sequence | None = None,
        input_boxes: Sequence | None = None,
        input_masks: Sequence | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Prepare a batch of images and their prompts for `SamHFModel`.

        Prompts are given per image (the outer list has one entry per image, as in transformers'
        `SamProcessor`), in original-image pixel coordinates. Image `i` has `P_i` prompts (one predicted
        mask set each); prompt `p` may have points, a box, or both, and, for all prompts or none, a
        low-resolution mask. A per-image entry with one prompt fewer dimension is one prompt.

        Args:
            images: one image or a list of `batch_size` images (any sizes).
            input_points: per image, `(P_i, N, 2)` XY points, a ragged list of `(N_p, 2)` arrays (an empty one
                for a prompt with a box only), or `(N, 2)` for a single prompt.
            input_labels: per image, labels matching `input_points`, `(P_i, N)` or `(N,)`: 1 foreground,
                0 background, -1 SAM's "not a point" token.
            input_boxes: per image, `(P_i, 4)` or `(4,)` XYXY boxes; a `None` or NaN row means "this prompt
                has no box". Boxes may extend past the image; they must not be inverted.
            input_masks: per image, `(P_i, mask_size, mask_size)` low-resolution mask logits (e.g.
                `pred_masks` of an earlier call).
            return_tensors: "pt" for torch tensors, "np" or None for numpy arrays.

        Returns:
            `BatchFeature` with `pixel_values (batch_size, 3, S, S)`, `original_sizes (batch_size, 2)`,
            `reshaped_input_sizes (batch_size, 2)` and, when prompts are given, the model-frame prompts padded
            to `P = max P_i` prompts and `N = max N_p` points: `input_points (batch_size, P, N, 2)`,
            `input_labels (batch_size, P, N)` (padding: `prompting.batching.PAD_LABEL`, masked out exactly),
            `input_boxes (batch_size, P, 4)` (NaN rows for prompts without a box), `input_masks
            (batch_size, P, mask_size, mask_size)`, and `prompt_mask (batch_size, P)`: True for real prompts.
            Pass `prompt_mask` to `post_process_masks` to drop the padded prompts' masks.
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        pixel_values, original_sizes, reshaped_sizes = self.preprocess_images(images)
        data: dict[str, Any] = {
            "pixel_values": pixel_values.numpy(),
            "original_sizes": original_sizes.numpy(),
            "reshaped_input_sizes": reshaped_sizes.numpy(),
        }
        sizes = [tuple(s) for s in original_sizes.tolist()]
        data.update(self._prepare_prompts(sizes, input_points, input_labels, input_boxes, input_masks))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _prepare_prompts(
        self,
        sizes: list[tuple[int, int]],
        points: Sequence | None,
        labels: Sequence | None,
        boxes: Sequence | None,
        masks: Sequence | None,
    ) -> dict[str, np.ndarray]:
        """Validate, transform and pad the prompts of every image (see `__call__`)."""
        if (points is None) != (labels is None):
            raise ValueError(
                "input_points and input_labels must be given together, got "
                f"input_points={'None' if points is None else 'given'}, "
                f"input_labels={'None' if labels is None else 'given'}"
            )
        given = {"input_points": points, "input_labels": labels, "input_boxes": boxes, "input_masks": masks}
        per_image = {}
        for name, value in given.items():
            if value is None:
                continue
            if len(value) != len(sizes):
                raise ValueError(f"{name} must have one entry per image ({len(sizes)}), got {len(value)}")
            per_image[name] = value
        if not per_image:
            return {}

        image_prompts = []  # per image: (points (P, N_max_i, 2), labels (P, N_max_i), boxes (P, 4), masks)
        for i, size in enumerate(sizes):
            img_points = img_labels = img_boxes = img_masks = None
            if points is not None:
                img_points, img_labels = _image_points(
                    per_image["input_points"][i], per_image["input_labels"][i], size, i
                )
                img_points = [self.transform_coords(p, size) for p in img_points]
            if boxes is not None:
                img_boxes = validate_boxes(per_image["input_boxes"][i], f"input_boxes[{i}]")
                img_boxes = self.transform_boxes(img_boxes, size)
            if masks is not None:
                img_masks = _image_masks(per_image["input_masks"][i], self.mask_size, i)
            counts = {
                name: len(value)
                for name, value in (
                    ("input_points", img_points),
                    ("input_boxes", img_boxes),
                    ("input_masks", img_masks),
                )
                if value is not None
            }
            if len(set(counts.values())) > 1:
                raise ValueError(f"prompts of image {i} must have the same number of prompts, got {counts}")
            image_prompts.append((img_points, img_labels, img_boxes, img_masks))

        num_prompts = max(
            (len(next(v for v in prompts if v is not None)) for prompts in image_prompts), default=0
        )
        batch = len(sizes)
        out: dict[str, np.ndarray] = {"prompt_mask": np.zeros((batch, num_prompts), dtype=bool)}
        if points is not None:
            no_points = (np.zeros((0, 2)), np.zeros(0))  # a padded prompt
            per_prompt = [
                [*zip(img_points, img_labels, strict=True), *[no_points] * (num_prompts - len(img_points))]
                for img_points, img_labels, _, _ in image_prompts
            ]
            coords, labels = pad_points([prompt for prompts in per_prompt for prompt in prompts])
            out["input_points"] = coords.reshape(batch, num_prompts, -1, 2)
            out["input_labels"] = labels.reshape(batch, num_prompts, -1)
        if boxes is not None:
            out["input_boxes"] = np.full((batch, num_prompts, 4), np.nan, dtype=np.float32)
        if masks is not None:
            out["input_masks"] = np.zeros(
                (batch, num_prompts, self.mask_size, self.mask_size), dtype=np.float32
            )
        for i, (img_points, _, img_boxes, img_masks) in enumerate(image_prompts):
            count = len(next(v for v in (img_points, img_boxes, img_masks) if v is not None))
            out["prompt_mask"][i, :count] = True
            if img_boxes is not None:
                out["input_boxes"][i, :count] = img_boxes
            if img_masks is not None:
                out["input_masks"][i, :count] = img_masks
        return out

    # ------------------------------------------------------------------ masks

    def post_process_masks(
        self,
        masks: torch.Tensor | Sequence[torch.Tensor],
        original_sizes: torch.Tensor | Sequence[Sequence[int]],
        reshaped_input_sizes: torch.Tensor | Sequence[Sequence[int]],
        binarize: bool = True,
        mask_threshold: float = 0.0,
        prompt_mask: torch.Tensor | np.ndarray | None = None,
    ) -> list[torch.Tensor]:
        """Low-resolution logits -> masks of each original image (as official `postprocess_masks`).

        Upsamples bilinearly to `image_size`, crops the padding (to `reshaped_input_sizes`), and resizes
        bilinearly to `original_sizes`; all in float32.

        Args:
            masks: `(batch_size, P, M, mask_size, mask_size)` logits (`pred_masks`), or a list of
                `(P_i, M, mask_size, mask_size)`.
            original_sizes: `(batch_size, 2)` `(H, W)` of the images.
            reshaped_input_sizes: `(batch_size, 2)` `(H, W)` after resizing.
            binarize: threshold the logits (returns bool) instead of returning float logits.
            mask_threshold: logit threshold for `binarize`.
            prompt_mask: `(batch_size, P)` from the processor; padded prompts are dropped when given.

        Returns:
            one tensor per image, `(P_i, M, H, W)` bool (or float32 logits without `binarize`).
        """
        if isinstance(masks, torch.Tensor) and masks.dim() != 5:
            raise ValueError(
                f"masks must have shape (batch_size, point_batch_size, num_masks, {self.mask_size}, "
                f"{self.mask_size}), got {tuple(masks.shape)}"
            )
        original_sizes = [_as_size(s, "original_sizes") for s in _as_list(original_sizes)]
        reshaped_sizes = [_as_size(s, "reshaped_input_sizes") for s in _as_list(reshaped_input_sizes)]
        if not len(masks) == len(original_sizes) == len(reshaped_sizes):
            raise ValueError(
                f"masks, original_sizes and reshaped_input_sizes must have one entry per image, got "
                f"{len(masks)}, {len(original_sizes)} and {len(reshaped_sizes)}"
            )
        if prompt_mask is not None:
            prompt_mask = torch.as_tensor(prompt_mask, dtype=torch.bool)
            if prompt_mask.shape[0] != len(masks):
                raise ValueError(
                    f"prompt_mask must have shape (batch_size={len(masks)}, P), got {tuple(prompt_mask.shape)}"
                )
        results = []
        for i, (image_masks, original, reshaped) in enumerate(
            zip(masks, original_sizes, reshaped_sizes, strict=True)
        ):
            image_masks = torch.as_tensor(image_masks)
            if image_masks.dim() != 4:
                raise ValueError(
                    f"masks[{i}] must have shape (P, num_masks, mask_size, mask_size), got {tuple(image_masks.shape)}"
                )
            if prompt_mask is not None:
                image_masks = image_masks[prompt_mask[i].to(image_masks.device).bool()]
            upscaled = self.upscale_masks(image_masks, reshaped, original)
            results.append(upscaled > mask_threshold if binarize else upscaled)
        return results

    def upscale_masks(
        self, masks: torch.Tensor, reshaped_input_size: Sequence[int], original_size: Sequence[int]
    ) -> torch.Tensor:
        """`(N, C, mask_size, mask_size)` logits of one image -> `(N, C, H, W)` float32 logits."""
        return upscale_masks(masks, self.image_size, reshaped_input_size, original_size)

    def mask_to_label(
        self, mask: np.ndarray | torch.Tensor, original_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """A binary mask of an image -> `(mask_size, mask_size)` float {0, 1} target in the padded model frame.

        The mask is resized bilinearly (antialiased) to the reshaped size, zero-padded to `image_size`,
        averaged over `image_size / mask_size` blocks and thresholded at 0.5, i.e. the inverse of
        `post_process_masks` up to resampling, so the target lines up with `pred_masks`.

        Args:
            mask: `(H, W)` bool, uint8 (0/1 or 0/255 both read as nonzero = foreground) or float in [0, 1].
            original_size: `(H, W)` of the image; must equal the mask's shape (checked) when given.
        """
        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if array.ndim != 2 or min(array.shape) == 0:
            raise ValueError(f"mask must be a non-empty (H, W) array, got shape {array.shape}")
        if original_size is not None and tuple(_as_size(original_size, "original_size")) != array.shape:
            raise ValueError(
                f"mask must have the image's original_size {tuple(original_size)} as shape, got {array.shape}"
            )
        if array.dtype.kind == "f":
            target = torch.from_numpy(array.astype(np.float32))
        elif array.dtype == bool or array.dtype.kind in "ui":
            target = torch.from_numpy((array != 0).astype(np.float32))
        else:
            raise TypeError(f"mask must be bool, integer or float, got dtype {array.dtype}")
        new_h, new_w = self.get_preprocess_shape(*array.shape)
        target = F.interpolate(
            target[None, None], (new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
        target = F.pad(target, (0, self.image_size - new_w, 0, self.image_size - new_h))
        target = F.avg_pool2d(target, self.image_size // self.mask_size)
        return (target[0, 0] > 0.5).float()


# ---------------------------------------------------------------------- image helpers


def _as_image_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"images must be {IMAGE_FORMS} or a non-empty list of them, got an empty list")
        return list(images)
    return [images]


# ---------------------------------------------------------------------- prompt helpers


def _as_size(size: Any, name: str) -> tuple[int, int]:
    values = size.tolist() if isinstance(size, (torch.Tensor, np.ndarray)) else list(size)
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"{name} must be a positive (H, W) pair, got {values}")
    return int(values[0]), int(values[1])


def _as_list(value: Any) -> list:
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else list(value)


def _as_float_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric, got {value!r}") from error


def _prompt_list(value: Any, item_ndim: int) -> list:
    """Per-image prompts as a list of per-prompt items; an item alone (ndim `item_ndim`) is one prompt."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [value] if value.ndim == item_ndim else list(value)
    value = list(value)
    if value and value[0] is not None and np.ndim(value[0]) == item_ndim - 1:
        return [value]
    return value


def validate_points(
    coords: Any,
    labels: Any,
    original_size: tuple[int, int],
    coords_name: str = "input_points",
    labels_name: str = "input_labels",
) -> tuple[np.ndarray, np.ndarray]:
    """Check one prompt's points: `(N, 2)` XY pixels inside the `(H, W)` image (the border included) and
    `(N,)` labels in {1, 0, -1}. Returns float64 coords and int64 labels; raises ValueError naming the
    arguments otherwise."""
    coords = _as_float_array(coords, coords_name)
    labels = _as_float_array(labels, labels_name)
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"{coords_name} must have shape (num_points, 2) as XY pixels, got {coords.shape}")
    if labels.shape != (len(coords),):
        raise ValueError(
            f"{labels_name} must have one label per point of {coords_name}, shape ({len(coords)},), "
            f"got {labels.shape}"
        )
    bad = ~np.isin(labels, _VALID_POINT_LABELS)
    if bad.any():
        raise ValueError(
            f"{labels_name} must hold 1 (foreground), 0 (background) or -1, got {labels[bad].tolist()}"
        )
    height, width = original_size
    inside = (coords[:, 0] >= 0) & (coords[:, 0] <= width) & (coords[:, 1] >= 0) & (coords[:, 1] <= height)
    if not inside.all():
        raise ValueError(
            f"{coords_name} must be XY pixels inside the image (0 <= x <= {width}, 0 <= y <= {height}), "
            f"got {coords[~inside].tolist()}"
        )
    return coords, labels.astype(np.int64)


def validate_boxes(boxes: Any, name: str = "input_boxes") -> np.ndarray:
    """Check `(P, 4)` XYXY pixel boxes (a `None` or NaN row means "no box"): finite, x1 >= x0, y1 >= y0.
    Boxes may extend past the image. Returns a float64 `(P, 4)` array; raises ValueError otherwise."""
    rows = [
        np.full(4, np.nan) if row is None else _as_float_array(row, name) for row in _prompt_list(boxes, 1)
    ]
    if any(row.shape != (4,) for row in rows):
        raise ValueError(
            f"{name} must have shape (num_prompts, 4) as XYXY pixels, got rows of shapes {[r.shape for r in rows]}"
        )
    array = np.stack(rows) if rows else np.zeros((0, 4))
    if np.isinf(array).any():
        raise ValueError(f"{name} must be finite (a NaN or None row means no box), got {array.tolist()}")
    present = ~np.isnan(array).any(axis=1)
    inverted = present & ((array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1]))
    if inverted.any():
        raise ValueError(f"{name} must be XYXY with x1 >= x0 and y1 >= y0, got {array[inverted].tolist()}")
    return array


def _image_points(
    points: Any, labels: Any, size: tuple[int, int], index: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate the points of one image: `P` prompts of `(N_p, 2)` XY coords and `(N_p,)` labels."""
    name, label_name = f"input_points[{index}]", f"input_labels[{index}]"
    points, labels = _prompt_list(points, 2), _prompt_list(labels, 1)
    if len(points) != len(labels):
        raise ValueError(
            f"{name} and {label_name} must have one entry per prompt, got {len(points)} and {len(labels)}"
        )
    checked = [
        validate_points(coords, lab, size, f"{name}[{p}]", f"{label_name}[{p}]")
        for p, (coords, lab) in enumerate(zip(points, labels, strict=True))
    ]
    return [c for c, _ in checked], [lab for _, lab in checked]


def _image_masks(masks: Any, mask_size: int, index: int) -> np.ndarray:
    array = _as_float_array(masks, f"input_masks[{index}]")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (mask_size, mask_size):
        raise ValueError(
            f"input_masks[{index}] must be low-resolution mask logits of shape (num_prompts, {mask_size}, "
            f"{mask_size}), e.g. pred_masks of an earlier call, got {array.shape}"
        )
    return array


def _module_file_stem(cls: type) -> str:
    """The file name (without `.py`) of the module defining `cls`: what `auto_map` names in a saved folder."""
    return cls.__module__.rpartition(".")[2]


def _read_processor_config(path: str, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    names = (PROCESSOR_CONFIG_NAME, _TRANSFORMERS_PROCESSOR_CONFIG_NAME)
    if os.path.isdir(path):
        for name in names:
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file) as f:
                    return json.load(f)
        raise FileNotFoundError(f"no {' or '.join(names)} in {path}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    for name in names:
        try:
            file = hf_hub_download(path, name, **hub_kwargs)
        except RemoteEntryNotFoundError:  # try the next name; network and auth errors propagate
            continue
        except LocalEntryNotFoundError:  # not cached: offline, try the next name; else the Hub did not answer
            if hub_cache_miss(path, hub_kwargs) is None:
                raise
            continue
        with open(file) as f:
            return json.load(f)
    raise FileNotFoundError(
        hub_cache_miss(path, hub_kwargs) or f"no {' or '.join(names)} in the Hub repo {path}"
    )


def _from_transformers_config(config: dict[str, Any]) -> dict[str, Any]:
    """Map a transformers `SamImageProcessor` config to `SamHFProcessor` arguments."""
    kind = config.get("image_processor_type", "")
    if not kind.startswith("SamImageProcessor"):
        raise ValueError(
            f"expected a SamHFProcessor or transformers SamImageProcessor config, got "
            f"processor_class={config.get('processor_class')!r}, image_processor_type={kind!r}"
        )
    for key in ("do_resize", "do_normalize", "do_pad", "do_rescale"):
        if config.get(key, True) is False:
            raise ValueError(
                f"SamHFProcessor always resizes, rescales, normalises and pads; the config sets {key}=False"
            )
    # transformers rescales to [0, 1] before normalising; SAM's statistics are on the 0-255 scale.
    scale = 1.0 / config.get("rescale_factor", 1 / 255)
    image_size = config.get("size", {}).get("longest_edge", 1024)
    pad = config.get("pad_size", {"height": image_size, "width": image_size})
    if pad.get("height") != image_size or pad.get("width") != image_size:
        raise ValueError(f"pad_size must be square and equal size.longest_edge={image_size}, got {pad}")
    mean = config.get("image_mean", [0.485, 0.456, 0.406])
    std = config.get("image_std", [0.229, 0.224, 0.225])
    return {
        "image_size": int(image_size),
        "mask_size": int(config.get("mask_size", {}).get("longest_edge", image_size // 4)),
        "pixel_mean": [round(m * scale, 6) for m in mean],
        "pixel_std": [round(s * scale, 6) for s in std],
    }

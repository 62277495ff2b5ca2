"""`transformers.pipeline("mask-generation", model=...)` for sam_hf models, through `SamAutomaticMaskGenerator`.

transformers' `MaskGenerationPipeline` is a second automatic mask generator built on its `SamImageProcessor`
(crop boxes, filters, NMS); it has no small-region clean-up, applies one NMS to all masks, and returns no COCO
RLE. `SamHFMaskGenerationPipeline` keeps its call and its output (`{"masks": [...], "scores": ...}`, with
`bounding_boxes` and `rle_mask` on request) and runs sam_hf's own generator, so every generator option
(`min_mask_region_area`, `crop_n_layers`, a separate `crop_nms_thresh`, `output_mode`, `precision`, SAM-HQ's
`hq_token_only`) is a pipeline option, for every model variant (SAM, MobileSAM, SAM-HQ).

Two routes reach it:
    - installed: `import sam_hf` makes it the `"mask-generation"` task (`sam_hf.pipelines.registration`): a
      sam_hf model gets this class; any other model (transformers' `SamModel`, SAM-HQ, ...) gets transformers'
      own `MaskGenerationPipeline`, unchanged.
    - remote code: every sam_hf folder the package writes (`sam_hf.hub.save_model`) holds this module's source,
      flattened with the modules it imports (`sam_hf.remote_code`), and names it in `config.json`'s
      `custom_pipelines` (`CUSTOM_PIPELINES`), so `pipeline("mask-generation", model=folder,
      trust_remote_code=True)` runs it where sam_hf is not installed. This module therefore imports only
      modules that travel as remote code (no `sam_hf.hub`, no package `__init__`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers.image_utils import load_image as load_image_url
from transformers.pipelines.base import Pipeline
from transformers.pipelines.mask_generation import MaskGenerationPipeline

from .images import to_rgb
from .rle import coco_encode_rle, rle_to_mask
from .automatic_mask_generator import OUTPUT_MODES, SamAutomaticMaskGenerator
from .configuration_sam_hf import SamHFConfig
from .modeling_sam_hf import SamHFModel
from .processing_sam_hf import SamHFProcessor

__all__ = ["CUSTOM_PIPELINES", "TASK", "SamHFMaskGenerationPipeline"]

TASK = "mask-generation"
# transformers' `MaskGenerationPipeline` argument -> the `SamAutomaticMaskGenerator` argument it means.
_TRANSFORMERS_NAMES = {
    "points_per_crop": "points_per_side",
    "crops_n_layers": "crop_n_layers",
    "crops_nms_thresh": "crop_nms_thresh",
}
_GENERATOR_ARGS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "point_grids",
    "min_mask_region_area",
    "precision",
    "max_chunk_pixels",
    "hq_token_only",
)
_POSTPROCESS_ARGS = ("output_mode", "output_rle_mask", "output_bboxes_mask")
# transformers options the generator has no counterpart for, and what to use instead.
_UNSUPPORTED = {
    "mask_threshold": "SAM's generator binarises logits at 0.0",
    "max_hole_area": "use min_mask_region_area (fills holes and removes islands below that many pixels)",
    "max_sprinkle_area": "use min_mask_region_area (fills holes and removes islands below that many pixels)",
}


def _config_processor(model: Any) -> SamHFProcessor:
    return SamHFProcessor.from_model_config(model.config)


class SamHFMaskGenerationPipeline(Pipeline):
    """Segment everything in an image with a sam_hf model, in the form of transformers' mask-generation pipeline.

    Built by `transformers.pipeline("mask-generation", model=...)` once sam_hf is imported; `model` may be a
    folder written by `SamHFModel.save_pretrained` or `sam-hf convert`, a Hub id of such a model, or a loaded
    `SamHFModel` (a PEFT model wrapping one works too). Where sam_hf is not installed, a folder or Hub repo the
    package wrote loads it as remote code: `pipeline("mask-generation", model=..., trust_remote_code=True)`.
    Constructing it with another model returns transformers' `MaskGenerationPipeline` for that model.

    Options, given to `pipeline(...)` or to each call: every `SamAutomaticMaskGenerator` argument under its
    name (`points_per_side`, `points_per_batch`, `pred_iou_thresh`, `stability_score_thresh`,
    `stability_score_offset`, `box_nms_thresh`, `crop_n_layers`, `crop_nms_thresh`, `crop_overlap_ratio`,
    `crop_n_points_downscale_factor`, `point_grids`, `min_mask_region_area`, `precision`, `max_chunk_pixels`,
    and for a SAM-HQ model `hq_token_only`),
    also under transformers' names (`points_per_crop`, `crops_n_layers`, `crops_nms_thresh`); then
    `output_mode` (`"binary_mask"`, `"uncompressed_rle"`, `"coco_rle"`), `output_rle_mask`,
    `output_bboxes_mask` and `timeout` (seconds, for an image URL). Defaults are the generator's, which are
    transformers' too. transformers' pipeline applies `crops_nms_thresh` both within and between crops; here
    `box_nms_thresh` is the NMS within a crop and `crop_nms_thresh` the one between crops (it prefers masks
    from smaller crops, as SAM's generator).

    Args:
        model: a `SamHFModel` or a PEFT model wrapping one.
        image_processor: its `SamHFProcessor`; by default `find_processor(model)`.
        **kwargs: `transformers.Pipeline` arguments (`device`, ...) and the options above.

    Raises:
        ValueError / TypeError: an unknown option, an option given under both of its names, or a transformers
            option the generator has no counterpart for (`mask_threshold` other than 0, `max_hole_area`,
            `max_sprinkle_area`); bad option values raise the generator's `ValueError` at the call.
    """

    _load_processor = False
    # None: load softly. A transformers `SamModel` handed to `MaskGenerationPipeline` needs its
    # `SamImageProcessor`; for a sam_hf model a failure is fine, `__init__` finds the `SamHFProcessor` itself.
    _load_image_processor = None
    _load_feature_extractor = False
    _load_tokenizer = False
    # transformers' soft load would turn the image processor's `auto_map` into a `...VideoProcessor` remote-code
    # reference and ask whether to run it.
    _load_video_processor = False
    # `(model) -> SamHFProcessor` for a model given without its processor. Installed, the registration sets
    # `sam_hf.hub.load_processor`'s search: the processor saved with the model (`model.name_or_path`, in any
    # form the package resolves), else the one matching its config. As remote code, transformers' `pipeline`
    # loads the processor saved in the folder and passes it; this default serves only a model object.
    find_processor: Callable[[Any], Any] = staticmethod(_config_processor)

    def __new__(cls, model: Any = None, **kwargs: Any) -> Pipeline:
        if _is_sam_hf(model):
            return super().__new__(cls)
        if kwargs.get("image_processor") is None:
            raise ValueError(
                f"a {type(model).__name__} runs in transformers' MaskGenerationPipeline, which needs its image "
                "processor: pass image_processor=..., or save one with the model (preprocessor_config.json)"
            )
        return MaskGenerationPipeline(model=model, **kwargs)

    def __init__(self, model: SamHFModel | Any, image_processor: Any = None, **kwargs: Any) -> None:
        # By name: loaded as remote code, the processor's class and this module's copy of it are distinct classes.
        if type(image_processor).__name__ != SamHFProcessor.__name__:
            image_processor = self.find_processor(model)
        super().__init__(model=model, image_processor=image_processor, **kwargs)

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        for name, reason in _UNSUPPORTED.items():
            value = kwargs.pop(name, None)
            if value is not None and not (name == "mask_threshold" and value == 0):
                raise ValueError(f"{name} is not supported by sam_hf's generator ({reason}), got {value!r}")
        for theirs, ours in _TRANSFORMERS_NAMES.items():
            if theirs in kwargs:
                if ours in kwargs and kwargs[ours] != kwargs[theirs]:
                    raise ValueError(
                        f"{theirs} is transformers' name of {ours}; give one of them, got {theirs}="
                        f"{kwargs[theirs]!r} and {ours}={kwargs[ours]!r}"
                    )
                kwargs[ours] = kwargs.pop(theirs)
        preprocess = {"timeout": kwargs.pop("timeout")} if "timeout" in kwargs else {}
        forward = {name: kwargs.pop(name) for name in _GENERATOR_ARGS if name in kwargs}
        postprocess = {name: kwargs.pop(name) for name in _POSTPROCESS_ARGS if name in kwargs}
        if kwargs:
            raise TypeError(
                f"unknown mask-generation option(s) {sorted(kwargs)}; expected generator options "
                f"{list(_GENERATOR_ARGS)}, transformers' names {list(_TRANSFORMERS_NAMES)}, "
                f"{list(_POSTPROCESS_ARGS)} or timeout"
            )
        if postprocess.get("output_mode", OUTPUT_MODES[0]) not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {postprocess['output_mode']!r}")
        return preprocess, forward, postprocess

    def __call__(self, image: Any, **kwargs: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """Generate the masks of one image or of each image in a list.

        Args:
            image: an image path or http(s) URL, a PIL image or a numpy array (any form
                `sam_hf.data.images.to_rgb` reads), or a list of them.
            **kwargs: options for this call (see the class docstring), and transformers' `batch_size` and
                `num_workers` for a list: images are read `batch_size` at a time (by `num_workers` loader
                workers), and each image is still encoded and segmented on its own, so the results are those
                of one call per image.

        Returns:
            Per image, a dict in transformers' form, masks sorted by decreasing score:
            - `masks`: per `output_mode`: `"binary_mask"`, `(H, W)` bool tensors (transformers' form);
              `"uncompressed_rle"`, `{"size": [H, W], "counts": [int, ...]}` (column-major runs starting
              with background, transformers' `rle_mask` form); `"coco_rle"`, compressed COCO RLE
              (`pycocotools.mask.decode` reads it).
            - `scores`: `(num_masks,)` float32 tensor, the model's predicted IoU of each mask.
            - `bounding_boxes` (if `output_bboxes_mask`): `(num_masks, 4)` int64 XYXY pixel boxes, inclusive of
              the last mask column and row (as transformers and SAM).
            - `rle_mask` (if `output_rle_mask`): the masks as uncompressed RLE.
            - `stability_scores`: `(num_masks,)` float32, and `point_coords`: `(num_masks, 2)` float XY pixels
              of the prompt that gave each mask (SAM's generator records).
        """
        return super().__call__(image, **kwargs)

    def preprocess(self, image: Any, timeout: float | None = None) -> dict[str, np.ndarray]:
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            image = load_image_url(image, timeout=timeout)
        return {"image": to_rgb(image)}

    def _forward(
        self, model_inputs: dict[str, np.ndarray | list[np.ndarray]], **generator_kwargs: Any
    ) -> dict[str, Any]:
        generator = SamAutomaticMaskGenerator(
            self.model, output_mode="uncompressed_rle", processor=self.image_processor, **generator_kwargs
        )
        images = model_inputs["image"]
        # With batch_size > 1 transformers collates a batch's images into a list, and splits a list of
        # per-image results back into one `postprocess` call per image.
        if isinstance(images, list):
            return {"records": [generator.generate(image) for image in images]}
        return {"records": generator.generate(images)}

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        output_mode: str = "binary_mask",
        output_rle_mask: bool = False,
        output_bboxes_mask: bool = False,
    ) -> dict[str, Any]:
        records = model_outputs["records"]
        rles = [record["segmentation"] for record in records]
        if output_mode == "binary_mask":
            masks = [torch.from_numpy(rle_to_mask(rle)) for rle in rles]
        elif output_mode == "coco_rle":
            masks = [coco_encode_rle(rle) for rle in rles]
        else:
            masks = rles
        outputs = {
            "masks": masks,
            "scores": torch.tensor([r["predicted_iou"] for r in records], dtype=torch.float32),
            "stability_scores": torch.tensor([r["stability_score"] for r in records], dtype=torch.float32),
            "point_coords": torch.tensor(
                [r["point_coords"][0] for r in records], dtype=torch.float64
            ).reshape(-1, 2),
        }
        if output_bboxes_mask:
            xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.int64).reshape(-1, 4)
            outputs["bounding_boxes"] = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        if output_rle_mask:
            outputs["rle_mask"] = rles
        return outputs


# `config.json`'s `custom_pipelines`, which `sam_hf.hub.save_model` writes: transformers' `pipeline` then loads this
# class from the folder's copy of this module (with `trust_remote_code=True`) and the model with `AutoModel`.
CUSTOM_PIPELINES = {
    TASK: {
        "impl": f"{__name__.rpartition('.')[2]}.{SamHFMaskGenerationPipeline.__name__}",
        "pt": ["AutoModel"],
        "type": "image",
    }
}


def _is_sam_hf(model: Any) -> bool:
    """`model` is a `SamHFModel` (or a PEFT model on one): by its config, as the model class loaded as remote
    code is not the installed one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "model_type", None) == SamHFConfig.model_type

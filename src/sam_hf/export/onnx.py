"""Export a SAM model to ONNX: the image encoder, and the prompt encoder + mask decoder with the official
`segment_anything` ONNX interface, so code written for the official ONNX decoder runs on it.

The output folder holds:

- `image_encoder.onnx`: input `pixel_values` `(1, 3, image_size, image_size)` float32, the image as
  `SamHFProcessor` prepares it (RGB, longest side resized to `image_size`, normalised with `pixel_mean` /
  `pixel_std` on the 0-255 scale, zero-padded at the bottom and right); outputs the image features the model's
  decoder needs, named by `model.image_feature_names`: `image_embeddings` `(1, C, h, w)` (256 x 64 x 64 for
  SAM), and for SAM-HQ also its early feature `intermediate_embeddings` `(1, h, w, D)` (segment_anything_hq's
  `interm_embeddings[0]`).
- `mask_decoder.onnx`: the interface of official `segment_anything.utils.onnx.SamOnnxModel` as exported by its
  `scripts/export_onnx_model.py`, all inputs float32:
    - `image_embeddings` `(1, C, h, w)`: the encoder's output (SAM-HQ: then `intermediate_embeddings`, where
      segment_anything_hq's `SamOnnxModel` takes `interm_embeddings` and reads its first entry);
    - `point_coords` `(1, num_points, 2)`: XY in the resized-input frame (original pixels scaled by
      `image_size / max(H, W)`, as official `ResizeLongestSide.apply_coords`); `num_points` is dynamic;
    - `point_labels` `(1, num_points)`: 1 foreground, 0 background, 2 / 3 box top-left / bottom-right corner,
      -1 padding point (add one at (0, 0) when there is no box, as the official notebook does);
    - `mask_input` `(1, 1, 4h, 4w)`: low-resolution mask logits (e.g. a previous `low_res_masks`);
    - `has_mask_input` `(1,)`: 1 to use `mask_input`, 0 to ignore it;
    - `orig_im_size` `(2,)`: `(H, W)` of the original image.
  Outputs: `masks` `(1, M, H, W)` logits at the original size (threshold at `mask_threshold`, 0.0),
  `iou_predictions` `(1, M)`, `low_res_masks` `(1, M, 4h, 4w)` logits in the padded model frame. With
  `return_single_mask` (the official notebook's choice and the default) M = 1, chosen by the official
  `SamOnnxModel.select_masks` rule: with at most two prompt points (a click and its padding point, or a box's
  two corners alone) the best-scored of the three multimask outputs, otherwise the single-mask output. A box
  alone therefore gives `SamPredictor.predict(box=box)`'s best-scored mask, not
  `predict(box=box, multimask_output=False)`; for that answer export with `return_single_mask=False` and take
  `masks[:, 0]`. Without `return_single_mask` M = 4, the single-mask output then the three multimask ones, as
  the official script's default. SAM-HQ's decoder adds its HQ mask to the chosen one (to each of the four),
  or with `hq_token_only`, fixed at export as in segment_anything_hq's `SamOnnxModel`, returns it alone (one
  mask only); the choice is the decoder's own (`select_single_mask`, `all_outputs`).
- `image_encoder.onnx.data` / `mask_decoder.onnx.data`: a graph's weights when they are stored beside it (ONNX
  external data, all in one file), which protobuf's 2 GB limit on one file requires for ViT-H in float32.
- `onnx_config.json`: every file of the export, the inputs and outputs, the preprocessing and the mask
  threshold; `preprocessor_config.json` and its code: the processor, so `SamHFProcessor.from_pretrained(out_dir)`
  preprocesses.

An export into a folder that holds an earlier one removes the earlier export's files that it does not write
again: those its `onnx_config.json` lists and the external data its graphs reference.

Both ONNX graphs run the package's own modules (`SamHFModel.image_encoder`, `prompt_encoder.embed_points`,
`prompt_encoder.mask_downscaling`, `mask_decoder.predict_masks` and its choice of outputs,
`SamHFProcessor.upscale_masks`), traced by
torch's TorchScript-based exporter (`dynamo=False`): the size of `masks` depends on the *values* of
`orig_im_size`, which tracing records as a data-dependent resize, while `torch.export` would need the sizes
as unbacked symbols. With `quantize="int8"`, both graphs get onnxruntime's dynamic quantization (int8
weights of matrix products, activations quantized at run time).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling import SamHFModel
from ..processing_sam_hf import SamHFProcessor

__all__ = [
    "CONFIG_FILE",
    "DATA_SUFFIX",
    "DECODER_FILE",
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "DEFAULT_OPSET",
    "ENCODER_FILE",
    "MASK_THRESHOLD",
    "QUANTIZE_CHOICES",
    "ExportResult",
    "export_onnx",
]

ENCODER_FILE = "image_encoder.onnx"
DECODER_FILE = "mask_decoder.onnx"
CONFIG_FILE = "onnx_config.json"
# Suffix of the file beside a graph that holds its weights when they are stored outside it.
DATA_SUFFIX = ".data"
DEFAULT_OPSET = 17
QUANTIZE_CHOICES = ("int8",)
# Logit threshold of a mask, as official `Sam.mask_threshold`.
MASK_THRESHOLD = 0.0
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# Which masks the decoder returns, as onnx_config.json states it (the module docstring explains it).
_SINGLE_MASK_RULE = (
    "one: with at most two prompt points (a click and its padding point, or a box's two corners alone) the "
    "best-scored of the three multimask outputs, as official SamOnnxModel.select_masks; otherwise the "
    "single-mask output. A box alone therefore gives the best-scored mask of SamPredictor.predict(box=box), not "
    "predict(box=box, multimask_output=False); for that answer export with --all-masks "
    "(return_single_mask=False) and take masks[:, 0]"
)
_ALL_MASKS_RULE = (
    "all four: index 0 the single-mask output (SamPredictor.predict(..., multimask_output=False)), 1 to 3 the "
    "multimask outputs (predict(..., multimask_output=True))"
)
_MISSING_EXTRA = 'ONNX export needs onnx and onnxruntime: pip install "sam_hf[onnx]"'


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote.

    Args:
        encoder: the image encoder `.onnx` file.
        decoder: the prompt encoder + mask decoder `.onnx` file (official `SamOnnxModel` interface).
        config: `onnx_config.json`: inputs, outputs, preprocessing, mask threshold.
        processor: `preprocessor_config.json`, read by `SamHFProcessor.from_pretrained(out_dir)`.
        files: every file of the export, external data and the processor's code included, as `config` lists
            them.
        quantize: None for float32 graphs, "int8" for dynamically quantized ones.
    """

    encoder: Path
    decoder: Path
    config: Path
    processor: Path
    files: tuple[Path, ...]
    quantize: str | None = None


class _ImageEncoderGraph(nn.Module):
    """`pixel_values` -> the image features the model's decoder needs (`model.image_feature_names`, in that
    order) through the model's encoder."""

    def __init__(self, model: SamHFModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.get_image_features(pixel_values)
        return tuple(features[name] for name in self.model.image_feature_names)


class _PromptDecoderGraph(nn.Module):
    """The official ONNX decoder interface (see module docstring) over the model's own prompt encoder,
    mask decoder and the processor's mask upscaling. Its first inputs are the image features, named by
    `feature_names`, then `DECODER_INPUTS[1:]`."""

    def __init__(
        self, model: SamHFModel, processor: SamHFProcessor, return_single_mask: bool, hq_token_only: bool
    ):
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.feature_names = model.image_feature_names
        self.processor = processor
        self.return_single_mask = return_single_mask
        self.hq_token_only = hq_token_only

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_features = len(self.feature_names)
        image_features = dict(zip(self.feature_names, inputs[:num_features], strict=True))
        point_coords, point_labels, mask_input, has_mask_input, orig_im_size = inputs[num_features:]
        prompt_encoder = self.prompt_encoder
        sparse = prompt_encoder.embed_points(point_coords, point_labels)  # (1, num_points, C)
        # A blend instead of a branch, so one graph serves both cases.
        no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * prompt_encoder.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        low_res_masks, iou_predictions = self.mask_decoder.predict_masks(
            image_features, prompt_encoder.get_dense_pe(), sparse, None, dense
        )
        if self.return_single_mask:
            # The official `SamOnnxModel.select_masks` rule: the multimask outputs for at most two points.
            # Counted from the labels so that the graph counts its input's points.
            multimask = (torch.ones_like(point_labels).sum(dim=1) <= 2).to(iou_predictions.dtype)  # (1,)
            low_res_masks, iou_predictions = self.mask_decoder.select_single_mask(
                low_res_masks, iou_predictions, multimask, self.hq_token_only
            )
        else:
            low_res_masks, iou_predictions = self.mask_decoder.all_outputs(
                low_res_masks, iou_predictions, self.hq_token_only
            )
        resized = _resized_size(orig_im_size, self.processor.image_size)
        masks = self.processor.upscale_masks(low_res_masks, resized, orig_im_size.to(torch.int64))
        return masks, iou_predictions, low_res_masks


def _resized_size(orig_im_size: torch.Tensor, image_size: int) -> torch.Tensor:
    """`(H, W)` after resizing the longest side to `image_size`, as `SamHFProcessor.get_preprocess_shape`
    rounds it, in tensor operations so the exported graph computes it from its input."""
    size = orig_im_size.to(torch.float32)
    return torch.floor(size * (image_size / size.max()) + 0.5).to(torch.int64)


def export_onnx(
    model: SamHFModel | nn.Module | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = True,
    hq_token_only: bool = False,
    external_data: bool | None = None,
    processor: SamHFProcessor | None = None,
) -> ExportResult:
    """Write the image encoder and the prompt encoder + mask decoder of `model` as ONNX files (see the module
    docstring for their inputs, outputs and the preprocessing the encoder expects).

    Args:
        model: a `SamHFModel`, a PEFT model wrapping one (its adapter is merged into a copy first), or any form
            `sam_hf.hub.load_model` accepts (shipped name, Hub id, Meta .pth, sam_hf / transformers folder,
            adapter or `sam-hf finetune` output folder). A float32 CPU copy is exported when the model is in
            another dtype, on another device or in training mode; the caller's model is left as it is.
        out_dir: folder to write into (created if missing; the files of an earlier export there are replaced,
            and those this export does not write again are removed).
        quantize: None for float32 graphs, or "int8" for onnxruntime dynamic quantization of both.
        opset: ONNX opset version, at least 14 (the exporter's attention needs it).
        return_single_mask: the decoder returns one mask per call (the official notebook's export) instead of
            all four mask heads (the official script's default).
        hq_token_only: SAM-HQ's choice, fixed in the graph as in `segment_anything_hq`'s `SamOnnxModel`: the HQ
            mask alone instead of SAM's mask plus the HQ mask (one mask: with `return_single_mask` only). A
            model whose decoder has no HQ token raises ValueError when it is set.
        external_data: store each graph's weights in one `<graph>.onnx.data` file beside it (True) or inside
            the `.onnx` file (False); None (default): beside it only where the graph exceeds protobuf's 2 GB
            limit on one file.
        processor: the processor whose image size and normalisation the graphs assume; by default the one
            loaded with the model, else one matching `model.config`.

    Returns:
        `ExportResult` with the paths written.

    Raises:
        ImportError: onnx or onnxruntime is not installed (names the `sam_hf[onnx]` extra).
        ValueError: `quantize` or `opset` is not supported, or `model` names no model.
        TypeError: `model` is neither a model nor a name of one, or `external_data` is not a bool or None.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be None or one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int >= 14 (scaled_dot_product_attention needs 14), got {opset!r}")
    if external_data is not None and not isinstance(external_data, bool):
        raise TypeError(f"external_data must be True, False or None, got {external_data!r}")
    _require_onnx()
    model, processor = _exportable_model(model, processor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size, mask_size = model.config.image_size, model.config.mask_size
    feature_names = model.image_feature_names
    with torch.inference_mode(False), torch.no_grad():
        # The features' shapes as the encoder gives them: the decoder graph's example inputs.
        features = _ImageEncoderGraph(model)(torch.zeros(1, 3, size, size))
    feature_shapes = {name: list(f.shape) for name, f in zip(feature_names, features, strict=True)}
    # Everything is written to a scratch folder first and moved into `out` once complete, so a failed export
    # leaves an earlier one whole and no file is written over in place (ONNX appends to an existing data file).
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        traced, written = Path(scratch, "traced"), Path(scratch, "export")
        traced.mkdir()
        written.mkdir()
        with torch.inference_mode(False), torch.no_grad():
            _export(
                _ImageEncoderGraph(model),
                (torch.zeros(1, 3, size, size),),
                traced / ENCODER_FILE,
                ["pixel_values"],
                list(feature_names),
                None,
                opset,
            )
            decoder_inputs = (
                *(torch.zeros(shape) for shape in feature_shapes.values()),
                torch.tensor([[[size / 2, size / 3], [0.0, 0.0], [size / 4, size / 5]]]),
                torch.tensor([[1.0, 0.0, -1.0]]),
                torch.zeros(1, 1, mask_size, mask_size),
                torch.tensor([1.0]),
                torch.tensor([size * 1.5, size * 2.0]),
            )
            _export(
                _PromptDecoderGraph(model, processor, return_single_mask, hq_token_only),
                decoder_inputs,
                traced / DECODER_FILE,
                [*feature_names, *DECODER_INPUTS[1:]],
                list(DECODER_OUTPUTS),
                {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                opset,
            )
        data_files = {}
        for name in (ENCODER_FILE, DECODER_FILE):
            graph = traced / name
            if quantize:
                graph = _quantize(graph, Path(scratch, "quantized"))
            data_files[name] = _save_graph(graph, written / name, external_data)
        processor_file = Path(processor.save_pretrained(written)).name
        files = sorted([*os.listdir(written), CONFIG_FILE])
        config = _describe_export(
            model,
            processor,
            feature_shapes,
            quantize,
            opset,
            return_single_mask,
            hq_token_only,
            data_files,
            files,
        )
        (written / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        _replace_export(written, out, files)
    return ExportResult(
        out / ENCODER_FILE,
        out / DECODER_FILE,
        out / CONFIG_FILE,
        out / processor_file,
        tuple(out / name for name in files),
        quantize,
    )


def _quantize(graph: Path, folder: Path) -> Path:
    """onnxruntime's dynamic int8 quantization of `graph`, written to `folder` (its weights beside it where
    the float32 graph's were, so a graph over 2 GB can be written)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(exist_ok=True)
    quantized = folder / graph.name
    quantize_dynamic(
        graph,
        quantized,
        weight_type=QuantType.QInt8,
        use_external_data_format=bool(_external_data_locations(graph)),
    )
    return quantized


def _save_graph(source: Path, target: Path, external_data: bool | None) -> str | None:
    """Write the graph at `source` to `target` with its weights inside it or, with `external_data` (None: when
    they do not fit inside), in one `<target name>.data` file beside it. Returns that file's name, or None
    when the weights are inside `target`."""
    import onnx

    graph = onnx.load(source)
    if external_data is None:
        external_data = _over_protobuf_limit(graph)
    location = target.name + DATA_SUFFIX
    onnx.save_model(
        graph, target, save_as_external_data=external_data, all_tensors_to_one_file=True, location=location
    )
    return location if external_data else None


def _over_protobuf_limit(graph: Any) -> bool:
    """Whether `graph`, weights included, is over protobuf's 2 GB limit on one serialized message."""
    import onnx
    from google.protobuf.message import EncodeError

    try:
        return graph.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF
    except EncodeError:  # protobuf's upb backend cannot even size a message over the limit
        return True


def _external_data_locations(path: Path) -> set[str]:
    """Names of the files beside the graph at `path` that hold its external data."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    graph = onnx.load(path, load_external_data=False)
    return {
        ExternalDataInfo(tensor).location for tensor in graph.graph.initializer if uses_external_data(tensor)
    }


def _earlier_export_files(folder: Path) -> set[str]:
    """Names of the files of an export in `folder`: those its `onnx_config.json` lists and those its graphs'
    external data is read from (a config may list none). Only names of files directly in `folder` are taken,
    so nothing elsewhere is ever named."""
    from google.protobuf.message import DecodeError

    names = set()
    config = folder / CONFIG_FILE
    if config.is_file():
        try:
            listed = json.loads(config.read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            listed = []  # not a config that lists files: it names none of ours
        if isinstance(listed, list):
            names.update(name for name in listed if isinstance(name, str))
    for graph in (ENCODER_FILE, DECODER_FILE):
        if (folder / graph).is_file():
            try:
                names.update(_external_data_locations(folder / graph))
            except DecodeError:
                pass  # not an ONNX graph: it references no files of ours
    return {name for name in names if Path(name).name == name and (folder / name).is_file()}


def _replace_export(written: Path, out: Path, files: list[str]) -> None:
    """Move the export in `written` into `out`, then remove the files of the earlier export in `out` that
    the new one does not have."""
    stale = _earlier_export_files(out) - set(files)
    for name in files:
        os.replace(written / name, out / name)
    for name in stale:
        (out / name).unlink()


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{_MISSING_EXTRA} ({error})") from error


def _exportable_model(
    model: SamHFModel | nn.Module | str | os.PathLike, processor: SamHFProcessor | None
) -> tuple[SamHFModel, SamHFProcessor]:
    """A float32, CPU, eval-mode `SamHFModel` (a merged copy for an adapter) and its processor."""
    if isinstance(model, (str, os.PathLike)):
        from ..hub import load_model

        model, loaded_processor, _ = load_model(model, merge_adapter=True)
        processor = processor or loaded_processor
    elif not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a SamHFModel, a PEFT model wrapping one, or a model name or path, got "
            f"{type(model).__name__}"
        )
    elif hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    elif model.training or any(
        p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()
    ):
        model = copy.deepcopy(model)
    if not isinstance(model, SamHFModel):
        raise TypeError(f"model must wrap a SamHFModel, got {type(model).__name__}")
    model = model.float().cpu().eval()
    return model, processor or SamHFProcessor.from_model_config(model.config)


def _export(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
    opset: int,
) -> None:
    import warnings

    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which cannot express the decoder's
        # value-dependent output size (module docstring); tracer warnings concern Python scalars we keep constant.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )


def _describe_export(
    model: SamHFModel,
    processor: SamHFProcessor,
    feature_shapes: dict[str, list[int]],
    quantize: str | None,
    opset: int,
    return_single_mask: bool,
    hq_token_only: bool,
    data_files: dict[str, str | None],
    files: list[str],
) -> dict[str, Any]:
    size, mask_size = processor.image_size, model.config.mask_size
    num_masks = 1 if return_single_mask else model.mask_decoder.num_mask_tokens
    return {
        "source_model": model.name_or_path or None,
        "opset": opset,
        "quantize": quantize,
        "files": files,
        "image_encoder": {
            "file": ENCODER_FILE,
            "external_data": data_files[ENCODER_FILE],
            "inputs": {"pixel_values": [1, 3, size, size]},
            "outputs": feature_shapes,
        },
        "mask_decoder": {
            "file": DECODER_FILE,
            "external_data": data_files[DECODER_FILE],
            "interface": "segment_anything.utils.onnx.SamOnnxModel",
            "return_single_mask": return_single_mask,
            "hq_token_only": hq_token_only,
            "masks_returned": _SINGLE_MASK_RULE if return_single_mask else _ALL_MASKS_RULE,
            "inputs": {
                **feature_shapes,
                "point_coords": [1, "num_points", 2],
                "point_labels": [1, "num_points"],
                "mask_input": [1, 1, mask_size, mask_size],
                "has_mask_input": [1],
                "orig_im_size": [2],
            },
            "outputs": {
                "masks": [1, num_masks, "H", "W"],
                "iou_predictions": [1, num_masks],
                "low_res_masks": [1, num_masks, mask_size, mask_size],
            },
        },
        "preprocessing": {
            "image_size": size,
            "resize": "longest side to image_size, bilinear; (H, W) -> int(H * s + 0.5), int(W * s + 0.5), "
            "s = image_size / max(H, W)",
            "channels": "RGB",
            "pixel_mean": list(processor.pixel_mean),
            "pixel_std": list(processor.pixel_std),
            "value_range": "0-255 before normalisation",
            "pad": "zeros at the bottom and right, after normalisation, to image_size x image_size",
            "layout": "NCHW float32",
            "point_coords": "original XY pixels times s",
        },
        "mask_threshold": MASK_THRESHOLD,
    }

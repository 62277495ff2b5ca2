"""ONNX export: both files run in onnxruntime on real photos and agree with the PyTorch model; the decoder
takes the official `SamOnnxModel` inputs, built as the official notebook builds them."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import perturb_all_weights, randomize_positional_terms
from sam_hf import SamHFConfig, SamHFModel, SamHFProcessor, SamPredictor
from sam_hf.cli import main
from sam_hf.export import export_onnx
from sam_hf.export.onnx import (
    CONFIG_FILE,
    DATA_SUFFIX,
    DECODER_FILE,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_FILE,
)
from sam_hf.hub import load_model

ort = pytest.importorskip("onnxruntime")

# fp32 graphs: the bound on low-resolution logits, also used for embeddings and IoU predictions.
FP32_ATOL = 1e-4
# int8 (onnxruntime dynamic quantization) against the float32 PyTorch model, on sam-hf-tiny, both photos,
# every prompt of `_run_photo` and all four mask heads (logits span about +-20 to +-45). Measured: max |low-res
# logit difference| 1.92, max |IoU prediction difference| 0.021, mean mask IoU 0.92, lowest mask IoU 0.81
# among masks covering at least 1% of the image (0.68 on a 0.7% one: small masks lose most to a few pixels).
# The bounds leave a margin over those measurements.
INT8_LOGIT_ATOL = 2.5
INT8_IOU_PREDICTION_ATOL = 0.05
INT8_MIN_MEAN_MASK_IOU = 0.88
INT8_MIN_MASK_IOU = 0.75
INT8_MIN_MASK_AREA = 0.01


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _prompt_cases(height: int, width: int) -> dict[str, dict]:
    """Prompts in original-image XY pixels, relative to the image size: point, points, box, point + box."""
    w, h = width, height
    return {
        "point": {"points": [[0.5 * w, 0.45 * h]], "labels": [1]},
        "multi_point": {
            "points": [[0.4 * w, 0.4 * h], [0.6 * w, 0.55 * h], [0.1 * w, 0.9 * h]],
            "labels": [1, 1, 0],
        },
        "box": {"box": [0.25 * w, 0.2 * h, 0.75 * w, 0.85 * h]},
        "point_box": {
            "points": [[0.5 * w, 0.5 * h]],
            "labels": [1],
            "box": [0.3 * w, 0.3 * h, 0.7 * w, 0.8 * h],
        },
    }


def _official_inputs(processor, image_shape, prompt, mask_input=None) -> dict[str, np.ndarray]:
    """The decoder inputs as official code builds them: points then box corners (labels 2, 3), or a padding
    point (0, 0) with label -1 when there is no box; coordinates mapped to the resized frame."""
    points = list(prompt.get("points", []))
    labels = list(prompt.get("labels", []))
    if "box" in prompt:
        points += np.reshape(prompt["box"], (2, 2)).tolist()
        labels += [2, 3]
    else:
        points.append([0.0, 0.0])
        labels.append(-1)
    mask_size = processor.mask_size
    return {
        "point_coords": processor.transform_coords(np.array([points]), image_shape).astype(np.float32),
        "point_labels": np.array([labels], dtype=np.float32),
        "mask_input": np.zeros((1, 1, mask_size, mask_size), np.float32)
        if mask_input is None
        else mask_input,
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(image_shape, dtype=np.float32),
    }


def _model_prompts(processor, image_shape, prompt, mask_input=None) -> dict[str, torch.Tensor]:
    """The same prompt as `SamHFModel.forward`'s keyword arguments, one prompt group of one image, in the model
    frame."""
    kwargs = {}
    if "points" in prompt:
        coords = processor.transform_coords(np.array(prompt["points"]), image_shape)
        kwargs["input_points"] = torch.as_tensor(coords, dtype=torch.float32)[None, None]
        kwargs["input_labels"] = torch.tensor(prompt["labels"])[None, None]
    if "box" in prompt:
        boxes = processor.transform_boxes(np.array(prompt["box"]), image_shape)
        kwargs["input_boxes"] = torch.as_tensor(boxes, dtype=torch.float32)[None, None]
    if mask_input is not None:
        kwargs["input_masks"] = torch.from_numpy(mask_input)[:, 0][None]
    return kwargs


def _torch_outputs(model, embeddings, processor, image_shape, prompt, mask_input=None):
    """The PyTorch model on the same prompt: `(low_res_masks, iou)` with the single-mask output first, as the
    all-masks export returns them, and masks at the original size."""
    kwargs = _model_prompts(processor, image_shape, prompt, mask_input)
    with torch.inference_mode():
        single = model(image_embeddings=embeddings, multimask_output=False, **kwargs)
        multi = model(image_embeddings=embeddings, multimask_output=True, **kwargs)
    low_res = torch.cat([single.pred_masks, multi.pred_masks], dim=2)  # (1, 1, 4, mask_size, mask_size)
    iou = torch.cat([single.iou_scores, multi.iou_scores], dim=2)[0]
    resized = processor.get_preprocess_shape(*image_shape)
    masks = processor.post_process_masks(low_res, [image_shape], [resized], binarize=False)[0]
    return low_res[0].numpy(), iou.numpy(), masks.numpy()


def _run_photo(encoder, decoder, model, processor, image):
    """Every prompt of `_prompt_cases`, and a mask prompt (the point's best low-res mask fed back), through
    the ONNX files and the PyTorch model. Yields `(case, onnx outputs, torch outputs)`."""
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    onnx_embeddings = encoder.run(None, {"pixel_values": pixel_values.numpy()})[0]
    with torch.inference_mode():
        torch_embeddings = model.get_image_embeddings(pixel_values)
    yield "embeddings", onnx_embeddings, torch_embeddings.numpy()
    shape = image.shape[:2]
    for case, prompt in _prompt_cases(*shape).items():
        feeds = [(case, None)]
        if case == "point":
            low_res, iou, _ = _torch_outputs(model, torch_embeddings, processor, shape, prompt)
            best = low_res[:, 1 + int(np.argmax(iou[0, 1:]))][None]  # (1, 1, mask_size, mask_size)
            feeds.append(("point_mask", best))
        for name, mask_input in feeds:
            inputs = _official_inputs(processor, shape, prompt, mask_input)
            outputs = decoder.run(None, {"image_embeddings": onnx_embeddings, **inputs})
            yield name, outputs, _torch_outputs(model, torch_embeddings, processor, shape, prompt, mask_input)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def tiny():
    model, processor, _ = load_model("sam-hf-tiny", verbose=False)
    return model, processor


@pytest.fixture(scope="module")
def tiny_fp32_export(tmp_path_factory, tiny):
    """sam-hf-tiny exported through the Python API with all four mask heads."""
    return export_onnx("sam-hf-tiny", tmp_path_factory.mktemp("tiny_fp32"), return_single_mask=False)


def test_export_writes_files_and_preprocessing(tiny_fp32_export, tiny):
    model, processor = tiny
    result = tiny_fp32_export
    assert (result.encoder.name, result.decoder.name, result.config.name) == (
        ENCODER_FILE,
        DECODER_FILE,
        CONFIG_FILE,
    )
    config = json.loads(result.config.read_text())
    size, grid = processor.image_size, processor.image_size // model.config.vision_config.patch_size
    assert config["preprocessing"]["image_size"] == size
    assert config["preprocessing"]["pixel_mean"] == list(processor.pixel_mean)
    assert config["mask_threshold"] == 0.0 and config["quantize"] is None
    channels = model.config.vision_config.output_channels
    assert config["image_encoder"]["outputs"]["image_embeddings"] == [1, channels, grid, grid]
    assert SamHFProcessor.from_pretrained(result.processor.parent).to_dict() == processor.to_dict()
    decoder = _session(result.decoder)
    assert [i.name for i in decoder.get_inputs()] == list(DECODER_INPUTS)
    assert [o.name for o in decoder.get_outputs()] == list(DECODER_OUTPUTS)
    assert decoder.get_inputs()[1].shape == [1, "num_points", 2]
    assert [i.name for i in _session(result.encoder).get_inputs()] == ["pixel_values"]


def _listed_files(folder) -> list[str]:
    """The files `onnx_config.json` in `folder` lists, after checking they are exactly the folder's files."""
    listed = json.loads((folder / CONFIG_FILE).read_text())["files"]
    assert sorted(path.name for path in folder.iterdir()) == listed
    return listed


def _data_locations(graph_path) -> set[str]:
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    graph = onnx.load(graph_path, load_external_data=False)
    return {ExternalDataInfo(t).location for t in graph.graph.initializer if uses_external_data(t)}


def test_external_data_export_lists_every_file_and_runs_as_the_inline_one(tmp_path, tiny_fp32_export, photos):
    """Weights stored beside the graphs (as a model over 2 GB must be): one data file per graph, every file
    listed in onnx_config.json, and the same outputs as the export with the weights inside the graphs."""
    result = export_onnx("sam-hf-tiny", tmp_path, return_single_mask=False, external_data=True)
    listed = _listed_files(tmp_path)
    assert [path.name for path in result.files] == listed
    config = json.loads(result.config.read_text())
    for graph, key in ((ENCODER_FILE, "image_encoder"), (DECODER_FILE, "mask_decoder")):
        assert config[key]["external_data"] == graph + DATA_SUFFIX
        assert _data_locations(tmp_path / graph) == {graph + DATA_SUFFIX}
        assert (tmp_path / graph).stat().st_size < (tmp_path / (graph + DATA_SUFFIX)).stat().st_size
    inline = json.loads(tiny_fp32_export.config.read_text())
    assert (
        inline["image_encoder"]["external_data"] is None and inline["mask_decoder"]["external_data"] is None
    )
    assert not any(name.endswith(DATA_SUFFIX) for name in _listed_files(tiny_fp32_export.config.parent))
    image = photos["coffee"]
    processor = SamHFProcessor.from_pretrained(tmp_path)
    pixel_values = processor(image, return_tensors="np")["pixel_values"]
    outputs = []
    for export in (result, tiny_fp32_export):
        embeddings = _session(export.encoder).run(None, {"pixel_values": pixel_values})[0]
        inputs = _official_inputs(processor, image.shape[:2], _prompt_cases(*image.shape[:2])["point_box"])
        outputs.append(
            [embeddings, *_session(export.decoder).run(None, {"image_embeddings": embeddings, **inputs})]
        )
    for name, external, inline in zip(("image_embeddings", *DECODER_OUTPUTS), *outputs, strict=True):
        np.testing.assert_array_equal(external, inline, err_msg=name)


def test_export_into_an_earlier_export_leaves_no_stale_file(tmp_path):
    """A re-export replaces the earlier export's files and removes those it does not write again, whether
    its onnx_config.json lists them or only its graphs reference them (one loose file per tensor), and
    leaves every other file alone, inside the folder or outside it."""
    import onnx

    out = tmp_path / "onnx"
    first = export_onnx("sam-hf-tiny", out, external_data=True)
    sizes = {path.name: path.stat().st_size for path in first.files if path.name.endswith(DATA_SUFFIX)}
    second = export_onnx("sam-hf-tiny", out, external_data=True)
    assert {
        path.name: path.stat().st_size for path in second.files if path.name.endswith(DATA_SUFFIX)
    } == sizes
    _listed_files(out)

    # An earlier export whose encoder keeps each tensor in a file of its own, which its config does not
    # list, and whose config lists a file this export does not write and one outside the folder.
    encoder = onnx.load(out / ENCODER_FILE)
    (out / (ENCODER_FILE + DATA_SUFFIX)).unlink()
    onnx.save_model(encoder, out / ENCODER_FILE, save_as_external_data=True, all_tensors_to_one_file=False)
    loose = _data_locations(out / ENCODER_FILE)
    assert len(loose) > 10 and all((out / name).is_file() for name in loose)
    config = json.loads((out / CONFIG_FILE).read_text())
    config["files"] = ["old_code.py", "../outside.txt", DECODER_FILE]
    (out / CONFIG_FILE).write_text(json.dumps(config))
    for path in (out / "old_code.py", out / "notes.txt", tmp_path / "outside.txt"):
        path.write_text("text")

    export_onnx("sam-hf-tiny", out)
    assert (tmp_path / "outside.txt").is_file()
    (out / "notes.txt").unlink()
    listed = _listed_files(out)
    assert "old_code.py" not in listed and not any(name.endswith(DATA_SUFFIX) for name in listed)
    assert not _data_locations(out / ENCODER_FILE) and not _data_locations(out / DECODER_FILE)


def test_single_mask_decoder_answers_a_box_alone_as_documented(tmp_path, tiny_fp32_export, tiny, photos):
    """The default (single-mask) decoder, given a box alone, returns the best-scored multimask output, which
    is not `predict(box=..., multimask_output=False)`; the all-masks export's first mask is."""
    model, processor = tiny
    single = export_onnx(model, tmp_path, processor=processor)
    config = json.loads(single.config.read_text())["mask_decoder"]
    assert config["return_single_mask"] is True and "masks[:, 0]" in config["masks_returned"]
    image = photos["astronaut"]
    predictor = SamPredictor(model, processor)
    predictor.set_image(image)
    embeddings = predictor.get_image_embedding().numpy()
    box = np.array(_prompt_cases(*image.shape[:2])["box"]["box"])
    inputs = _official_inputs(processor, image.shape[:2], {"box": box})
    _, iou, low_res = _session(single.decoder).run(None, {"image_embeddings": embeddings, **inputs})
    _, multi_scores, multi_logits = predictor.predict(box=box, multimask_output=True)
    _, single_scores, single_logits = predictor.predict(box=box, multimask_output=False)
    best = int(np.argmax(multi_scores))
    np.testing.assert_allclose(low_res[0, 0], multi_logits[best], rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(iou[0, 0], multi_scores[best], rtol=0, atol=FP32_ATOL)
    assert np.abs(low_res[0, 0] - single_logits[0]).max() > 100 * FP32_ATOL
    _, iou, low_res = _session(tiny_fp32_export.decoder).run(None, {"image_embeddings": embeddings, **inputs})
    np.testing.assert_allclose(low_res[0, 0], single_logits[0], rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(iou[0, 0], single_scores[0], rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_fp32_files_match_pytorch_on_photos(tiny_fp32_export, tiny, photos, photo):
    model, processor = tiny
    encoder, decoder = _session(tiny_fp32_export.encoder), _session(tiny_fp32_export.decoder)
    image = photos[photo]
    results = _run_photo(encoder, decoder, model, processor, image)
    _, onnx_embeddings, torch_embeddings = next(results)
    np.testing.assert_allclose(onnx_embeddings, torch_embeddings, rtol=0, atol=FP32_ATOL)
    cases = []
    for case, (masks, iou, low_res), (torch_low_res, torch_iou, torch_masks) in results:
        cases.append(case)
        assert masks.shape == (1, 4, *image.shape[:2]) and low_res.shape == torch_low_res.shape
        np.testing.assert_allclose(low_res, torch_low_res, rtol=0, atol=FP32_ATOL, err_msg=case)
        np.testing.assert_allclose(iou, torch_iou, rtol=0, atol=FP32_ATOL, err_msg=case)
        np.testing.assert_allclose(masks, torch_masks, rtol=0, atol=FP32_ATOL, err_msg=case)
    assert cases == ["point", "point_mask", "multi_point", "box", "point_box"]


@pytest.mark.slow
def test_int8_cli_export_agrees_with_pytorch(tmp_path, tiny_fp32_export, tiny, photos, capsys):
    import onnx

    out = tmp_path / "int8"
    assert (
        main(["export", "sam-hf-tiny", str(out), "--format", "onnx", "--quantize", "int8", "--all-masks"])
        == 0
    )
    assert "wrote int8 ONNX files" in capsys.readouterr().out
    assert json.loads((out / CONFIG_FILE).read_text())["quantize"] == "int8"
    for name in (ENCODER_FILE, DECODER_FILE):
        ops = {node.op_type for node in onnx.load(out / name).graph.node}
        assert "DynamicQuantizeLinear" in ops, name  # activations quantized at run time
        assert (out / name).stat().st_size < 0.5 * (tiny_fp32_export.encoder.parent / name).stat().st_size
    model, processor = tiny
    encoder, decoder = _session(out / ENCODER_FILE), _session(out / DECODER_FILE)
    logit_errors, iou_prediction_errors, mask_ious, large_mask_ious = [], [], [], []
    for photo in ("astronaut", "coffee"):
        results = _run_photo(encoder, decoder, model, processor, photos[photo])
        next(results)
        for _case, (masks, iou, low_res), (torch_low_res, torch_iou, torch_masks) in results:
            logit_errors.append(np.abs(low_res - torch_low_res).max())
            iou_prediction_errors.append(np.abs(iou - torch_iou).max())
            for head in range(masks.shape[1]):
                expected = torch_masks[0, head] > 0
                mask_ious.append(_mask_iou(masks[0, head] > 0, expected))
                if expected.mean() >= INT8_MIN_MASK_AREA:
                    large_mask_ious.append(mask_ious[-1])
    print(
        f"int8 vs float32 PyTorch: max |low-res logit diff| {max(logit_errors):.3f}, max |IoU prediction diff| "
        f"{max(iou_prediction_errors):.3f}, mean mask IoU {np.mean(mask_ious):.3f}, min mask IoU "
        f"{min(mask_ious):.3f}, min among masks >= 1% of the image {min(large_mask_ious):.3f}"
    )
    assert max(logit_errors) <= INT8_LOGIT_ATOL
    assert max(iou_prediction_errors) <= INT8_IOU_PREDICTION_ATOL
    assert np.mean(mask_ious) >= INT8_MIN_MEAN_MASK_IOU
    assert len(large_mask_ious) >= 30 and min(large_mask_ious) >= INT8_MIN_MASK_IOU


def test_adapter_folder_is_merged_before_export(tmp_path, tiny, photos):
    """`sam-hf export ADAPTER_DIR`: the exported decoder computes the fine-tuned model, not its base."""
    from peft import LoraConfig, get_peft_model

    base, processor = tiny
    peft_model = get_peft_model(
        SamHFModel.from_pretrained("sam-hf-tiny"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out")]) == 0
    decoder = _session(tmp_path / "out" / DECODER_FILE)
    image = photos["astronaut"]
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        embeddings = base.get_image_embeddings(pixel_values)
    prompt = _prompt_cases(*image.shape[:2])["multi_point"]  # three points: the single-mask output
    inputs = _official_inputs(processor, image.shape[:2], prompt)
    _, iou, low_res = decoder.run(None, {"image_embeddings": embeddings.numpy(), **inputs})
    merged = peft_model.eval().merge_and_unload()
    tuned_low_res, tuned_iou, _ = _torch_outputs(merged, embeddings, processor, image.shape[:2], prompt)
    base_low_res, _, _ = _torch_outputs(base, embeddings, processor, image.shape[:2], prompt)
    np.testing.assert_allclose(low_res[0, 0], tuned_low_res[0, 0], rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(iou[0, 0], tuned_iou[0, 0], rtol=0, atol=FP32_ATOL)
    assert np.abs(tuned_low_res - base_low_res).max() > 100 * FP32_ATOL  # the adapter changes the output


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="quantize must be None or one of \\('int8',\\), got 'int4'"):
        export_onnx("sam-hf-tiny", tmp_path, quantize="int4")
    with pytest.raises(ValueError, match="opset must be an int >= 14.*got 11"):
        export_onnx("sam-hf-tiny", tmp_path, opset=11)
    with pytest.raises(TypeError, match="model must be a SamHFModel.*got int"):
        export_onnx(3, tmp_path)
    with pytest.raises(TypeError, match="external_data must be True, False or None, got 'yes'"):
        export_onnx("sam-hf-tiny", tmp_path, external_data="yes")
    assert not any(tmp_path.iterdir())


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "sam_hf\[onnx\]"'):
        export_onnx("sam-hf-tiny", tmp_path)
    assert main(["export", "sam-hf-tiny", str(tmp_path / "out")]) == 2
    assert 'sam-hf export: error: ONNX export needs onnx and onnxruntime: pip install "sam_hf[onnx]"' in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_official_onnx_code_runs_on_exported_vit_b(tmp_path, photos):
    """A ViT-B SAM (two encoder blocks, one windowed and one global, to keep the export fast) written as a
    Meta .pth, exported by the CLI with the default single-mask decoder, against official `SamOnnxModel` on
    the same weights, with inputs built as the official notebook `onnx_model_example.ipynb` builds them."""
    from segment_anything import SamPredictor as OfficialPredictor
    from segment_anything.build_sam import _build_sam
    from segment_anything.utils.onnx import SamOnnxModel

    torch.manual_seed(0)
    sam = _build_sam(
        encoder_embed_dim=768, encoder_depth=2, encoder_num_heads=12, encoder_global_attn_indexes=[1]
    )
    randomize_positional_terms(sam)
    sam.eval()
    torch.save(sam.state_dict(), tmp_path / "sam_vit_b_2_blocks.pth")
    assert main(["export", str(tmp_path / "sam_vit_b_2_blocks.pth"), str(tmp_path / "onnx")]) == 0

    image = photos["coffee"]
    predictor = OfficialPredictor(sam)
    predictor.set_image(image)
    official_embedding = predictor.get_image_embedding().numpy()
    processor = SamHFProcessor.from_pretrained(tmp_path / "onnx")
    pixel_values = processor(image, return_tensors="pt")["pixel_values"].numpy()
    image_embedding = _session(tmp_path / "onnx" / ENCODER_FILE).run(None, {"pixel_values": pixel_values})[0]
    np.testing.assert_allclose(image_embedding, official_embedding, rtol=0, atol=FP32_ATOL)

    ort_session = _session(tmp_path / "onnx" / DECODER_FILE)
    official_onnx_model = SamOnnxModel(sam, return_single_mask=True)

    def check(ort_inputs, case):
        masks, scores, low_res_logits = ort_session.run(None, ort_inputs)
        expected = official_onnx_model(**{k: torch.from_numpy(v) for k, v in ort_inputs.items()})
        assert masks.shape == (1, 1, *image.shape[:2]), case
        for name, actual, wanted in zip(
            DECODER_OUTPUTS, (masks, scores, low_res_logits), expected, strict=True
        ):
            np.testing.assert_allclose(
                actual, wanted.numpy(), rtol=0, atol=FP32_ATOL, err_msg=f"{case} {name}"
            )
        return low_res_logits

    # The notebook's cells, as written there (one point, then a box, then the mask fed back).
    input_point = np.array([[300, 200]])
    input_label = np.array([1])
    onnx_coord = np.concatenate([input_point, np.array([[0.0, 0.0]])], axis=0)[None, :, :]
    onnx_label = np.concatenate([input_label, np.array([-1])], axis=0)[None, :].astype(np.float32)
    onnx_coord = predictor.transform.apply_coords(onnx_coord, image.shape[:2]).astype(np.float32)
    ort_inputs = {
        "image_embeddings": image_embedding,
        "point_coords": onnx_coord,
        "point_labels": onnx_label,
        "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array(image.shape[:2], dtype=np.float32),
    }
    low_res_logits = check(ort_inputs, "point")

    input_point = np.array([[300, 200], [450, 260]])
    input_label = np.array([1, 1])
    onnx_coord = np.concatenate([input_point, np.array([[0.0, 0.0]])], axis=0)[None, :, :]
    onnx_label = np.concatenate([input_label, np.array([-1])], axis=0)[None, :].astype(np.float32)
    onnx_coord = predictor.transform.apply_coords(onnx_coord, image.shape[:2]).astype(np.float32)
    ort_inputs.update(point_coords=onnx_coord, point_labels=onnx_label)
    ort_inputs.update(mask_input=low_res_logits, has_mask_input=np.ones(1, dtype=np.float32))
    check(ort_inputs, "points with mask input")

    input_box = np.array([150, 80, 480, 330])
    input_point = np.array([[300, 200]])
    input_label = np.array([0])
    onnx_box_coords = input_box.reshape(2, 2)
    onnx_box_labels = np.array([2, 3])
    onnx_coord = np.concatenate([input_point, onnx_box_coords], axis=0)[None, :, :]
    onnx_label = np.concatenate([input_label, onnx_box_labels], axis=0)[None, :].astype(np.float32)
    onnx_coord = predictor.transform.apply_coords(onnx_coord, image.shape[:2]).astype(np.float32)
    ort_inputs.update(point_coords=onnx_coord, point_labels=onnx_label)
    ort_inputs.update(
        mask_input=np.zeros((1, 1, 256, 256), dtype=np.float32), has_mask_input=np.zeros(1, np.float32)
    )
    check(ort_inputs, "box and point")


def test_tiny_vit_model_exports_and_matches_pytorch(tmp_path, photos):
    """The export reads the model frame from the config, so a TinyViT encoder exports as a ViT does."""
    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("tiny_vit_t")).eval()
    perturb_all_weights(model)
    model.save_pretrained(tmp_path / "model")
    result = export_onnx(tmp_path / "model", tmp_path / "onnx", return_single_mask=False)
    processor = SamHFProcessor.from_model_config(model.config)
    encoder, decoder = _session(result.encoder), _session(result.decoder)
    results = _run_photo(encoder, decoder, model, processor, photos["coffee"])
    _, onnx_embeddings, torch_embeddings = next(results)
    assert onnx_embeddings.shape == (1, 32, 8, 8)
    np.testing.assert_allclose(onnx_embeddings, torch_embeddings, rtol=0, atol=FP32_ATOL)
    for case, (masks, iou, low_res), (torch_low_res, torch_iou, torch_masks) in results:
        np.testing.assert_allclose(low_res, torch_low_res, rtol=0, atol=FP32_ATOL, err_msg=case)
        np.testing.assert_allclose(iou, torch_iou, rtol=0, atol=FP32_ATOL, err_msg=case)
        np.testing.assert_allclose(masks, torch_masks, rtol=0, atol=FP32_ATOL, err_msg=case)


@pytest.mark.parametrize("hq_token_only", [False, True])
def test_sam_hq_model_exports_its_early_feature_and_matches_pytorch(tmp_path, photos, hq_token_only):
    """SAM-HQ: the encoder graph outputs the early feature beside the image embedding, the decoder graph takes
    both and answers as the model's forward does (with `hq_token_only` fixed at export, as segment_anything_hq's
    SamOnnxModel); multimask output where the official rule takes it (at most two points). fp32 within 1e-4."""
    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("tiny_hq")).eval()
    perturb_all_weights(model)
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "onnx"
    if hq_token_only:  # through the command line
        assert main(["export", str(tmp_path / "model"), str(out), "--hq-token-only"]) == 0
    else:
        export_onnx(tmp_path / "model", out)
    config = json.loads((out / CONFIG_FILE).read_text())
    assert list(config["image_encoder"]["outputs"]) == ["image_embeddings", "intermediate_embeddings"]
    assert list(config["mask_decoder"]["inputs"])[:2] == ["image_embeddings", "intermediate_embeddings"]
    assert config["mask_decoder"]["hq_token_only"] is hq_token_only
    processor = SamHFProcessor.from_model_config(model.config)
    encoder, decoder = _session(out / ENCODER_FILE), _session(out / DECODER_FILE)
    assert [i.name for i in decoder.get_inputs()] == [
        "image_embeddings",
        "intermediate_embeddings",
        *DECODER_INPUTS[1:],
    ]
    image = photos["coffee"]
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    onnx_features = encoder.run(None, {"pixel_values": pixel_values.numpy()})
    with torch.inference_mode():
        features = model.get_image_features(pixel_values)
    for onnx_feature, name in zip(onnx_features, model.image_feature_names, strict=True):
        np.testing.assert_allclose(onnx_feature, features[name].numpy(), rtol=0, atol=FP32_ATOL, err_msg=name)
    shape = image.shape[:2]
    for case, prompt in _prompt_cases(*shape).items():
        inputs = _official_inputs(processor, shape, prompt)
        masks, iou, low_res = decoder.run(
            None,
            {"image_embeddings": onnx_features[0], "intermediate_embeddings": onnx_features[1], **inputs},
        )
        kwargs = _model_prompts(processor, shape, prompt)
        multimask = inputs["point_labels"].shape[1] <= 2
        with torch.inference_mode():
            expected = model(**features, **kwargs, multimask_output=multimask, hq_token_only=hq_token_only)
        assert low_res.shape == (1, 1, *expected.pred_masks.shape[-2:]), case
        np.testing.assert_allclose(
            low_res, expected.pred_masks[0].numpy(), rtol=0, atol=FP32_ATOL, err_msg=case
        )
        np.testing.assert_allclose(iou, expected.iou_scores[0].numpy(), rtol=0, atol=FP32_ATOL, err_msg=case)
        resized = processor.get_preprocess_shape(*shape)
        torch_masks = processor.post_process_masks(expected.pred_masks, [shape], [resized], binarize=False)[0]
        np.testing.assert_allclose(masks, torch_masks.numpy(), rtol=0, atol=FP32_ATOL, err_msg=case)


def test_hq_token_only_needs_sam_hqs_decoder(tmp_path, tiny):
    with pytest.raises(ValueError, match="hq_token_only=True needs SAM-HQ's mask decoder"):
        export_onnx(tiny[0], tmp_path / "onnx", hq_token_only=True)

"""`transformers.pipeline("mask-generation")` on sam_hf models: the same masks as transformers' own pipeline on a
transformers `SamModel` with the same weights, the generator's options through the pipeline, folders written by
`save_pretrained` and `sam-hf convert`, and clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import SamImageProcessorPil, SamModel, pipeline
from transformers.pipelines.mask_generation import MaskGenerationPipeline

from conftest import perturb_all_weights, run_without_sam_hf
from sam_hf import (
    SamAutomaticMaskGenerator,
    SamHFConfig,
    SamHFMaskGenerationPipeline,
    SamHFModel,
    SamHFProcessor,
)
from sam_hf.cli import main
from sam_hf.hub import save_model
from sam_hf.modeling.checkpoint_io import save_transformers_checkpoint
from sam_hf.pretrained import shipped_model_path

# Thresholds at which the shipped model keeps a few dozen masks on the photo below (transformers' defaults,
# 0.88 / 0.95, keep 2), so that the comparison covers many masks.
OPEN = {"pred_iou_thresh": 0.2, "stability_score_thresh": 0.5}
# A coarse grid (13 masks on the photo below) where a test compares the pipeline with the generator.
GRID = {"points_per_side": 8}


@pytest.fixture(scope="module")
def shipped():
    return SamHFModel.from_pretrained("sam-hf-tiny").eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo, not square, at a size where the 128 px model's masks have detail: (200, 300, 3) uint8."""
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize((300, 200)))


@pytest.fixture(scope="module")
def sam_hf_folder(shipped, tmp_path_factory):
    """What a user saves: `SamHFModel.save_pretrained` + `SamHFProcessor.save_pretrained`."""
    folder = tmp_path_factory.mktemp("sam_hf")
    shipped.save_pretrained(folder)
    SamHFProcessor.from_pretrained("sam-hf-tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_records(shipped, photo):
    """The generator's records without the options under test."""
    return SamAutomaticMaskGenerator(shipped, **GRID, **OPEN).generate(photo)


def _mask_array(masks: list) -> np.ndarray:
    return np.stack([np.asarray(m) for m in masks]).reshape(len(masks), -1).astype(np.float64)


def _match(reference: list, masks: list) -> tuple[np.ndarray, np.ndarray]:
    """Index in `masks` of the best-IoU mask for each reference mask, and that IoU."""
    a, b = _mask_array(reference), _mask_array(masks)
    inter = a @ b.T
    iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1)
    match = iou.argmax(1)
    return match, iou[np.arange(len(reference)), match]


def test_matches_transformers_pipeline_on_the_same_weights(shipped, sam_hf_folder, photo, tmp_path):
    """transformers' pipeline on the shipped weights converted to a `SamModel` folder; options where the two
    coincide (no crops: transformers' one NMS at `crops_nms_thresh` is then the generator's in-crop NMS)."""
    transformers_folder = tmp_path / "transformers"
    save_transformers_checkpoint(shipped.config, shipped.state_dict(), transformers_folder)
    size = shipped.config.vision_config.image_size
    # The PIL image processor resizes as SAM does; transformers' default torchvision one resizes pixels up to
    # 0.0175 (normalised) apart, which moves scores by up to 3e-4 (measured) and would test the resize instead.
    SamImageProcessorPil(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": shipped.config.mask_size},
    ).save_pretrained(transformers_folder)
    options = {**OPEN, "points_per_crop": 16, "points_per_batch": 64, "crops_nms_thresh": 0.7}

    theirs_pipe = pipeline(
        "mask-generation",
        model=str(transformers_folder),
        image_processor=SamImageProcessorPil.from_pretrained(transformers_folder),
        device="cpu",
    )
    ours_pipe = pipeline("mask-generation", model=str(sam_hf_folder), device="cpu")
    assert type(theirs_pipe) is MaskGenerationPipeline and isinstance(theirs_pipe.model, SamModel)
    assert type(ours_pipe) is SamHFMaskGenerationPipeline and isinstance(ours_pipe.model, SamHFModel)
    theirs = theirs_pipe(Image.fromarray(photo), output_bboxes_mask=True, **options)
    ours = ours_pipe(Image.fromarray(photo), output_bboxes_mask=True, box_nms_thresh=0.7, **options)

    assert len(theirs["masks"]) >= 20
    assert len(ours["masks"]) == len(theirs["masks"])
    assert all(m.dtype == torch.bool and m.shape == photo.shape[:2] for m in ours["masks"])
    assert ours["scores"].dtype == theirs["scores"].dtype and ours["scores"].shape == theirs["scores"].shape
    match, iou = _match(theirs["masks"], ours["masks"])
    assert len(set(match.tolist())) == len(match), "masks are not matched one-to-one"
    # Measured on this photo: 31 masks, worst IoU 0.99932 (pixels whose logit sits at the threshold), scores
    # within 2.1e-5 (the converted config keeps transformers' LayerNorm eps 1e-6 where SAM has 1e-5, see
    # test_cli_convert), every box equal.
    assert iou.min() >= 0.99
    torch.testing.assert_close(ours["scores"][match], theirs["scores"], atol=1e-4, rtol=0)
    box_error = (ours["bounding_boxes"][match] - theirs["bounding_boxes"]).abs()
    assert box_error.max() <= 1


@pytest.mark.parametrize(
    "options",
    [
        {"min_mask_region_area": 40},
        {"crop_n_layers": 1, "crop_nms_thresh": 0.5, "box_nms_thresh": 0.8},
        {"crops_n_layers": 1, "crops_nms_thresh": 0.5, "points_per_crop": 8},
    ],
    ids=["small-regions", "crops-own-nms", "transformers-names"],
)
def test_generator_options_reach_the_generator(shipped, sam_hf_folder, photo, plain_records, options):
    """Each option gives what `SamAutomaticMaskGenerator` gives with it, under SAM's or transformers' names."""
    names = {
        "crops_n_layers": "crop_n_layers",
        "crops_nms_thresh": "crop_nms_thresh",
        "points_per_crop": "points_per_side",
    }
    generator_options = {names.get(k, k): v for k, v in options.items()}
    records = SamAutomaticMaskGenerator(shipped, **{**GRID, **OPEN, **generator_options}).generate(photo)

    pipe = pipeline("mask-generation", model=str(sam_hf_folder), device="cpu", **GRID, **OPEN)
    result = pipe(photo, **options)
    assert len(result["masks"]) == len(records) > 0
    for mask, record in zip(result["masks"], records, strict=True):
        np.testing.assert_array_equal(mask.numpy(), record["segmentation"])
    torch.testing.assert_close(result["scores"], torch.tensor([r["predicted_iou"] for r in records]))
    # the option changed the result (else this test would pass with the option dropped)
    assert len(plain_records) != len(records) or any(
        not np.array_equal(p["segmentation"], r["segmentation"])
        for p, r in zip(plain_records, records, strict=True)
    )


def test_coco_rle_and_boxes_decode_to_the_binary_masks(sam_hf_folder, photo):
    pipe = pipeline("mask-generation", model=str(sam_hf_folder), device="cpu", **GRID, **OPEN)
    binary = pipe(photo, min_mask_region_area=40)
    coco = pipe(
        photo, min_mask_region_area=40, output_mode="coco_rle", output_rle_mask=True, output_bboxes_mask=True
    )
    assert len(coco["masks"]) == len(binary["masks"]) > 0
    decoded = mask_utils.decode([{"size": m["size"], "counts": m["counts"].encode()} for m in coco["masks"]])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), torch.stack(binary["masks"]).numpy())
    for rle, mask, box in zip(coco["rle_mask"], binary["masks"], coco["bounding_boxes"], strict=True):
        assert rle["size"] == list(photo.shape[:2]) and sum(rle["counts"]) == mask.numel()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()]


def test_sam_hf_convert_output_and_loaded_models(shipped, photo, plain_records, tmp_path):
    """A folder `sam-hf convert` wrote (no processor file: the processor comes from the config) and a loaded
    model give the generator's masks; a list of images gives a list of results."""
    assert main(["convert", "sam-hf-tiny", str(tmp_path / "converted")]) == 0
    for model in (str(tmp_path / "converted"), shipped):
        pipe = pipeline("mask-generation", model=model, device="cpu", **GRID, **OPEN)
        assert pipe.image_processor.image_size == shipped.config.vision_config.image_size
        results = pipe([photo, Image.fromarray(photo)])
        assert len(results) == 2
        for result in results:
            assert len(result["masks"]) == len(plain_records) > 0
            np.testing.assert_array_equal(
                torch.stack(result["masks"]).numpy(), np.stack([r["segmentation"] for r in plain_records])
            )


def test_a_list_with_batch_size_gives_the_results_of_one_call_per_image(sam_hf_folder, photo):
    pipe = pipeline("mask-generation", model=str(sam_hf_folder), device="cpu", **GRID, **OPEN)
    images = [photo, np.ascontiguousarray(photo[::-1, :150]), Image.fromarray(photo[50:])]  # three sizes
    expected = [pipe(image, output_bboxes_mask=True) for image in images]
    assert len({len(result["masks"]) for result in expected}) > 1  # the images' results differ
    results = pipe(images, batch_size=2, output_bboxes_mask=True)  # a full batch, then a smaller one
    assert len(results) == len(images)
    for result, single in zip(results, expected, strict=True):
        assert sorted(result) == sorted(single)
        for key, value in single.items():
            if key == "masks":
                np.testing.assert_array_equal(torch.stack(result[key]).numpy(), torch.stack(value).numpy())
            else:
                torch.testing.assert_close(result[key], value, rtol=0, atol=0)


def test_a_saved_folder_loads_without_asking_to_run_remote_code(sam_hf_folder, monkeypatch):
    """With sam_hf imported, nothing of the folder's saved source runs, so transformers has nothing to ask."""

    def ask(prompt: str = "") -> str:
        pytest.fail(f"transformers asked: {prompt}")

    monkeypatch.setattr("builtins.input", ask)
    assert (
        type(pipeline("mask-generation", model=str(sam_hf_folder), device="cpu"))
        is SamHFMaskGenerationPipeline
    )


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"points_per_sid": 8}, TypeError, r"unknown mask-generation option\(s\) \['points_per_sid'\]"),
        ({"crops_n_layers": 1, "crop_n_layers": 2}, ValueError, "crops_n_layers is transformers' name of"),
        ({"max_hole_area": 10}, ValueError, "use min_mask_region_area"),
        ({"mask_threshold": 0.5}, ValueError, "binarises logits at 0.0"),
        ({"output_mode": "png"}, ValueError, "output_mode must be one of"),
        ({"pred_iou_thresh": 0.5, "points_per_batch": 0}, ValueError, "points_per_batch must be >= 1"),
    ],
)
def test_bad_options_raise(shipped, photo, options, error, match):
    pipe = pipeline("mask-generation", model=shipped, device="cpu")
    with pytest.raises(error, match=match):
        pipe(photo, **options)


def test_transformers_model_without_image_processor_raises(shipped):
    from sam_hf.modeling.checkpoint_conversion import to_transformers_config

    with pytest.raises(ValueError, match="needs its image processor"):
        pipeline("mask-generation", model=SamModel(to_transformers_config(shipped.config)), device="cpu")


def test_the_processor_saved_with_the_model_is_used(shipped, photo, plain_records, tmp_path):
    """Pixel statistics saved beside the weights reach the generator (its default would match the config)."""
    processor = SamHFProcessor(
        image_size=shipped.config.vision_config.image_size,
        mask_size=shipped.config.mask_size,
        pixel_mean=(100.0, 100.0, 100.0),
        pixel_std=(50.0, 50.0, 50.0),
    )
    shipped.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    result = pipeline("mask-generation", model=str(tmp_path), device="cpu", **GRID, **OPEN)(photo)
    records = SamAutomaticMaskGenerator(shipped, **GRID, **OPEN, processor=processor).generate(photo)
    assert len(result["masks"]) == len(records) > 0
    np.testing.assert_array_equal(
        torch.stack(result["masks"]).numpy(), np.stack([r["segmentation"] for r in records])
    )
    assert len(records) != len(plain_records) or any(
        not np.array_equal(p["segmentation"], r["segmentation"])
        for p, r in zip(plain_records, records, strict=True)
    )


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: 20-40 s here
def test_saved_and_shipped_folders_run_as_remote_code_where_sam_hf_is_absent(shipped, photo, tmp_path):
    """Copies of a folder `save_model` wrote and of the shipped sam-hf-tiny, in a process where sam_hf cannot be
    imported: with `trust_remote_code=True`, transformers' pipeline loads the pipeline, model and processor from
    each folder's source and gives the masks that the installed pipeline gives on it without `trust_remote_code`.
    """
    # Copies, as a download or `cp -r` gives them: nothing points back into the package.
    folders = {"saved": tmp_path / "saved", "shipped": tmp_path / "shipped"}
    save_model(shipped, tmp_path / "written")
    shutil.copytree(tmp_path / "written", folders["saved"])
    shutil.copytree(shipped_model_path("sam-hf-tiny"), folders["shipped"])
    photo_path = tmp_path / "photo.png"
    Image.fromarray(photo).save(photo_path)
    stdout = run_without_sam_hf(
        f"""
        import sys, torch
        from transformers import pipeline

        try:
            import sam_hf
        except ModuleNotFoundError as error:
            print(error)
        for folder in {[str(f) for f in folders.values()]!r}:
            pipe = pipeline("mask-generation", model=folder, trust_remote_code=True, device="cpu", **{GRID | OPEN!r})
            torch.save(pipe({str(photo_path)!r}, output_bboxes_mask=True), folder + "/remote.pt")
            print(type(pipe).__module__, type(pipe.model).__module__, type(pipe.image_processor).__module__)
        assert not [m for m in sys.modules if m.split(".")[0] == "sam_hf"]
        """,
        tmp_path / "modules",
    )
    blocked, *modules = stdout.splitlines()
    assert blocked == "No module named 'sam_hf'"
    for name, folder in folders.items():
        loaded = modules.pop(0).split()
        assert all(module.startswith(f"transformers_modules.{name}.") for module in loaded), loaded
        assert "custom_pipelines" in json.loads((folder / "config.json").read_text())
        pipe = pipeline("mask-generation", model=str(folder), device="cpu", **GRID, **OPEN)
        assert type(pipe) is SamHFMaskGenerationPipeline
        expected = pipe(str(photo_path), output_bboxes_mask=True)
        remote = torch.load(folder / "remote.pt", weights_only=True)
        assert len(expected["masks"]) > 0
        assert torch.equal(torch.stack(remote["masks"]), torch.stack(expected["masks"])), name
        for key in ("scores", "bounding_boxes"):
            assert torch.equal(remote[key], expected[key]), (name, key)


@pytest.fixture(scope="module")
def hq_model():
    """A tiny SAM-HQ model with every tensor perturbed (masks worth comparing)."""
    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("tiny_hq")).eval()
    perturb_all_weights(model)
    return model


@pytest.mark.parametrize("hq_token_only", [False, True])
def test_sam_hq_folder_gives_the_generators_masks(hq_model, photo, tmp_path, hq_token_only):
    """A SAM-HQ folder `save_model` wrote runs in the installed pipeline, `hq_token_only` included, with the
    generator's masks."""
    save_model(hq_model, tmp_path / "hq")
    options = {**GRID, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "hq_token_only": hq_token_only}
    pipe = pipeline("mask-generation", model=str(tmp_path / "hq"), device="cpu", **options)
    assert type(pipe) is SamHFMaskGenerationPipeline
    assert pipe.model.config.mask_decoder_config.decoder_type == "hq"
    result = pipe(photo)
    records = SamAutomaticMaskGenerator(hq_model, **options).generate(photo)
    assert len(result["masks"]) == len(records) > 0
    np.testing.assert_array_equal(
        torch.stack(result["masks"]).numpy(), np.stack([r["segmentation"] for r in records])
    )


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: 20-40 s here
def test_sam_hq_folder_runs_as_remote_code_where_sam_hf_is_absent(hq_model, photo, tmp_path):
    """A SAM-HQ folder `save_model` wrote, copied, in a process where sam_hf cannot be imported: `AutoModel` with
    `trust_remote_code=True` gives the SAM-HQ model (its early feature included), and the pipeline the masks the
    installed pipeline gives."""
    save_model(hq_model, tmp_path / "written")
    shutil.copytree(tmp_path / "written", tmp_path / "hq")
    photo_path = tmp_path / "photo.png"
    Image.fromarray(photo).save(photo_path)
    options = {**GRID, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "hq_token_only": True}
    folder = str(tmp_path / "hq")
    stdout = run_without_sam_hf(
        f"""
        import sys, torch
        from transformers import AutoModel, pipeline

        model = AutoModel.from_pretrained({folder!r}, trust_remote_code=True)
        features = model.get_image_features(torch.zeros(1, 3, 128, 128))
        print(type(model).__module__, model.config.mask_decoder_config.decoder_type, sorted(features))
        pipe = pipeline("mask-generation", model={folder!r}, trust_remote_code=True, device="cpu", **{options!r})
        torch.save(pipe({str(photo_path)!r}), {folder!r} + "/remote.pt")
        assert not [m for m in sys.modules if m.split(".")[0] == "sam_hf"]
        """,
        tmp_path / "modules",
    )
    module, decoder_type, features = stdout.split(maxsplit=2)
    assert module.startswith("transformers_modules.hq.") and decoder_type == "hq"
    assert features.strip() == "['image_embeddings', 'intermediate_embeddings']"
    expected = pipeline("mask-generation", model=folder, device="cpu", **options)(str(photo_path))
    remote = torch.load(tmp_path / "hq" / "remote.pt", weights_only=True)
    assert len(expected["masks"]) > 0
    assert torch.equal(torch.stack(remote["masks"]), torch.stack(expected["masks"]))
    assert torch.equal(remote["scores"], expected["scores"])

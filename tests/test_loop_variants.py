"""The data-engine loop of `test_loop` for SAM's variants, through the `sam-hf` command line on real photos.

Each variant starts from the official file a user downloads, written from its reference package with seeded
random weights: MobileSAM's `mobile_sam.pt` (`mobile_sam`) and Light HQ-SAM's `sam_hq_vit_tiny.pth`
(`segment_anything_hq`; TinyViT with SAM-HQ's decoder). annotate -> finetune from that file -> evaluate ->
segment / generate / label with the finetune output folder -> export to ONNX -> push --dry-run.
Each stage reads what the stage before it wrote, and each command says which model, variant included, it
loaded. Photos are small and grids coarse: the model resizes every image to 1024 px, so each encode costs
seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from test_loop import _sam_hf

pytestmark = pytest.mark.slow

_SIDE = 128  # pixels
_PHOTOS = ("astronaut", "chelsea", "coffee")
_AMG = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
# Per variant: the official file's name, the fixture that builds the reference model, and what the resolver's
# line says of the model.
_VARIANTS = {
    "mobile_sam": ("mobile_sam.pt", "official_vit_t", "image encoder tiny_vit, mask decoder sam"),
    "light_hq_sam": (
        "sam_hq_vit_tiny.pth",
        "official_hq_vit_tiny",
        "image encoder tiny_vit, mask decoder hq",
    ),
}


@pytest.fixture(scope="module", params=sorted(_VARIANTS))
def variant_loop(request, tmp_path_factory):
    """Runs annotate -> finetune -> evaluate once from a variant's official file; tests check each stage."""
    from skimage import data

    file_name, reference, said = _VARIANTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "CUDA_VISIBLE_DEVICES": ""}
    env["HF_HUB_OFFLINE"] = "1"
    (root / "photos").mkdir()
    for name in _PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((_SIDE, _SIDE))
        image.save(root / "photos" / f"{name}.png")
    official = root / file_name
    torch.save(request.getfixturevalue(reference).state_dict(), official)
    stages = {"root": root, "env": env, "official": official, "said": said, "variant": request.param}
    stages["annotate"] = _sam_hf(
        "annotate", str(root / "photos"), "--model", str(official), "--out", str(root / "dataset"),
        "--no-progress", *_AMG, env=env,
    )  # fmt: skip
    stages["finetune"] = _sam_hf(
        "finetune", "--model", str(official), "--dataset", str(root / "dataset"), "--lora-r", "4",
        "--max-steps", "1", "--batch-size", "1", "--max-prompts", "2", "--learning-rate", "0.05",
        "--eval-prompt", "box", "--eval-max-images", "1", "--output-dir", str(root / "ft"), env=env,
    )  # fmt: skip
    stages["evaluate"] = _sam_hf(
        "evaluate", "--model", str(root / "ft"), "--dataset", str(root / "dataset"), "--prompt", "box",
        "--max-images", "1", "--output", str(root / "eval.json"), env=env,
    )  # fmt: skip
    return stages


def _said(result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("sam_hf: loaded"))


def test_annotate_reads_the_official_file_and_writes_what_finetune_reads(variant_loop):
    from datasets import load_from_disk

    from sam_hf.data.rle import rle_to_mask

    root = variant_loop["root"]
    said = _said(variant_loop["annotate"])
    assert str(variant_loop["official"]) in said and variant_loop["said"] in said
    dataset = load_from_disk(str(root / "dataset"))
    rows = [row for split in dataset.values() for row in split]
    assert sorted(row["file_name"] for row in rows) == sorted(f"{name}.png" for name in _PHOTOS)
    assert set(dataset) == {"train", "test"}
    assert sum(len(row["masks"]) for row in rows) > 0
    for row in rows:
        for rle in row["masks"]:
            assert rle_to_mask(rle).shape == np.asarray(row["image"]).shape[:2], row["file_name"]
    # finetune read this dataset's train split, every row of it usable
    train = len(dataset["train"])
    usable = f"{root / 'dataset'} (split 'train'): {train} of {train} rows usable"
    assert usable in variant_loop["finetune"].stderr + variant_loop["finetune"].stdout


def test_finetune_from_the_official_file_names_its_base_and_keeps_the_variant(variant_loop):
    from sam_hf.hub import load_model

    root = variant_loop["root"]
    assert variant_loop["said"] in _said(variant_loop["finetune"])
    adapter = json.loads((root / "ft" / "adapter_config.json").read_text())
    assert os.path.samefile(adapter["base_model_name_or_path"], variant_loop["official"])
    runs = json.loads((root / "ft" / "eval_results.json").read_text())["runs"]
    assert set(runs) == {"base", "finetuned"}
    assert runs["base"]["results"]["box"]["mean_iou"] != runs["finetuned"]["results"]["box"]["mean_iou"]
    model, _, resolved = load_model(root / "ft", merge_adapter=True, verbose=False)
    assert resolved.kind == "finetune_output" and resolved.merged
    assert (
        variant_loop["said"] == f"image encoder {resolved.encoder_type}, mask decoder {resolved.decoder_type}"
    )
    # the decoder's own modules (SAM-HQ's HQ token and fusion; none for SAM's) trained beside the adapters
    trained = [f"mask_decoder.{name}" for name in type(model.mask_decoder).trained_in_full]
    assert sorted(adapter["modules_to_save"] or []) == sorted(trained)
    card = (root / "ft" / "README.md").read_text()
    variant = f"image encoder `{resolved.encoder_type}`, mask decoder `{resolved.decoder_type}`"
    assert f"| SAM variant | {variant} |" in card and "license: apache-2.0" in card


def test_evaluate_takes_the_finetune_output(variant_loop):
    said = _said(variant_loop["evaluate"])
    assert str(variant_loop["root"] / "ft") in said and variant_loop["said"] in said
    results = json.loads((variant_loop["root"] / "eval.json").read_text())
    assert set(results["runs"]) == {"base", "finetuned"}


def test_segment_generate_and_label_take_the_finetune_output(variant_loop, monkeypatch, capsys):
    import sam_hf.cli.label as cli_label
    from sam_hf.cli import main

    root, env = variant_loop["root"], variant_loop["env"]
    photo = root / "photos" / "coffee.png"
    scores = {}
    for model in (variant_loop["official"].name, "ft"):
        result = _sam_hf("segment", str(photo), "--model", str(root / model), "--point", "60,40", "--out",
                         str(root / f"seg_{model}"), env=env)  # fmt: skip
        assert variant_loop["said"] in _said(result)
        scores[model] = json.loads((root / f"seg_{model}" / "scores.json").read_text())
    assert scores["ft"]["model"] == str(root / "ft")
    assert scores["ft"]["scores"] != scores[variant_loop["official"].name]["scores"]  # the adapter is applied
    result = _sam_hf("generate", str(photo), "--model", str(root / "ft"), "--out", str(root / "gen"), *_AMG,
                     env=env)  # fmt: skip
    assert variant_loop["said"] in _said(result)
    assert json.loads((root / "gen" / "masks.json").read_text())

    def click_and_accept(session, args):
        proposal = session.add_click(60, 40)
        # Random weights: the largest candidate (SAM's three; SAM-HQ gives one), since the most confident
        # one may be empty.
        session.select_candidate(int(proposal.masks.sum(axis=(1, 2)).argmax()))
        session.accept(class_name="cup")

    monkeypatch.setattr(cli_label, "serve", click_and_accept)
    capsys.readouterr()
    assert (
        main(["label", str(root / "photos"), "--model", str(root / "ft"), "--out", str(root / "labels")]) == 0
    )
    assert variant_loop["said"] in capsys.readouterr().err
    annotations = json.loads((root / "labels" / "annotations.json").read_text())
    assert len(annotations["annotations"]) == 1 and annotations["annotations"][0]["area"] > 0


def test_export_runs_in_onnxruntime_as_the_merged_model(variant_loop, capsys):
    """The encoder graph outputs the image features the decoder needs, by their names; the decoder graph takes
    them and, on a real photo, answers as the merged model does under the official output rule (the best of the
    multimask outputs for at most two points, else the single mask; SAM-HQ's one mask). fp32 within 1e-4, or
    1e-5 relative for the low-res logits, which reach ~1e3 here (random official weights after one step at a
    high learning rate)."""
    from sam_hf.cli import main
    from sam_hf.hub import load_model
    from test_export_onnx import FP32_ATOL, _model_prompts, _official_inputs, _prompt_cases, _session

    root = variant_loop["root"]
    capsys.readouterr()
    assert main(["export", str(root / "ft"), str(root / "onnx")]) == 0
    assert variant_loop["said"] in capsys.readouterr().err
    config = json.loads((root / "onnx" / "onnx_config.json").read_text())
    encoder = _session(root / "onnx" / config["image_encoder"]["file"])
    decoder = _session(root / "onnx" / config["mask_decoder"]["file"])
    model, processor, _ = load_model(root / "ft", merge_adapter=True, verbose=False)
    image = np.asarray(Image.open(root / "photos" / "coffee.png").convert("RGB"))
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    outputs = encoder.run(None, {"pixel_values": pixel_values.numpy()})
    onnx_features = dict(zip(model.image_feature_names, outputs, strict=True))
    with torch.inference_mode():
        features = model.get_image_features(pixel_values)
    for name, feature in features.items():
        np.testing.assert_allclose(onnx_features[name], feature.numpy(), rtol=0, atol=FP32_ATOL, err_msg=name)
    shape = image.shape[:2]
    for case, prompt in _prompt_cases(*shape).items():
        inputs = _official_inputs(processor, shape, prompt)
        _, iou, low_res = decoder.run(None, {**onnx_features, **inputs})
        kwargs = _model_prompts(processor, shape, prompt)
        with torch.inference_mode():
            expected = model(**features, **kwargs, multimask_output=inputs["point_labels"].shape[1] <= 2)
        best = int(expected.iou_scores[0, 0].argmax())
        np.testing.assert_allclose(
            low_res[0, 0], expected.pred_masks[0, 0, best].numpy(), rtol=1e-5, atol=FP32_ATOL, err_msg=case
        )
        np.testing.assert_allclose(iou[0, 0], expected.iou_scores[0, 0, best].item(), rtol=0, atol=FP32_ATOL)


def test_push_dry_run_lists_the_adapter_and_names_the_local_base(variant_loop):
    repo_id = f"someone/{variant_loop['variant']}-loop"
    result = _sam_hf("push", str(variant_loop["root"] / "ft"), "--repo-id", repo_id, "--dry-run",
                     env=variant_loop["env"])  # fmt: skip
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "preprocessor_config.json"):
        assert name in result.stdout
    assert "base model" in result.stderr.lower()

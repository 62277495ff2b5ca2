"""The shipped sam-hf-tiny: resolvable by name, loads strictly, its masks follow the prompted object; the
pretraining script runs (and resumes) end to end on a CPU with the tiny test preset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_hf import SamHFModel
from sam_hf.modeling.configuration_sam_hf import SAM_HF_PRESETS
from sam_hf.pretrained import SHIPPED_MODELS, shipped_model_path
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.training.synthetic import generate_sample

_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    path = shipped_model_path("sam-hf-tiny")
    return SamHFModel.from_pretrained(path).eval(), SamHFProcessor.from_pretrained(path)


def test_names_resolve_to_package_folders():
    assert SHIPPED_MODELS == ("sam-hf-tiny",)
    path = shipped_model_path("sam-hf-tiny")
    assert shipped_model_path("sam_hf/sam-hf-tiny") == path
    assert {p.name for p in path.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
    }
    assert shipped_model_path("facebook/sam-vit-base") is None


def test_from_pretrained_takes_the_shipped_name(shipped, tmp_path, monkeypatch):
    model, processor = shipped
    monkeypatch.chdir(tmp_path)
    by_name = SamHFModel.from_pretrained("sam-hf-tiny")
    assert all(
        torch.equal(a, b)
        for a, b in zip(by_name.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert SamHFProcessor.from_pretrained("sam-hf-tiny").to_dict() == processor.to_dict()


def test_a_local_folder_named_like_a_shipped_model_wins(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model.save_pretrained("sam-hf-tiny")
    loaded = SamHFModel.from_pretrained("sam-hf-tiny")
    assert loaded.config.vision_config.image_size == tiny_model.config.vision_config.image_size == 128


def test_config_is_the_preset(shipped):
    model, processor = shipped
    vision, prompt, decoder = SAM_HF_PRESETS["sam_hf_tiny"]
    config = model.config
    for section, expected in zip(
        (config.vision_config, config.prompt_encoder_config, config.mask_decoder_config),
        (vision, prompt, decoder),
        strict=True,
    ):
        assert {key: getattr(section, key) for key in expected} == expected
    assert (processor.image_size, processor.mask_size) == (128, 64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_box_masks_follow_the_object(shipped):
    """A box on each object of at least 1000 px of held-out images (18 objects) gives a mask that matches it.

    Measured for this model: mean IoU 0.73; 17 of 18 masks overlap their own object most.
    """
    model, processor = shipped
    ious, own_best = [], []
    for index in range(8):
        sample = generate_sample(index, "test", "shapes", image_size=192)
        targets = sample.masks[sample.masks.reshape(len(sample.masks), -1).sum(1) >= 1000]
        if not len(targets):
            continue
        boxes = []
        for mask in targets:
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        inputs = processor(sample.image, input_boxes=[boxes], return_tensors="pt")
        with torch.inference_mode():
            out = model(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
            )
        masks = processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][:, 0].numpy()
        assert masks.shape == (len(targets), 192, 192)
        for k, mask in enumerate(masks):
            overlaps = [_iou(mask, target) for target in targets]
            ious.append(overlaps[k])
            own_best.append(int(np.argmax(overlaps)) == k)
    assert len(ious) == 18
    assert np.mean(ious) > 0.65
    assert sum(own_best) >= 16


def test_pretraining_script_runs_and_resumes_on_cpu(tmp_path, monkeypatch):
    """Two steps of the recipe with the tiny test preset, stopped after one and resumed."""
    monkeypatch.syspath_prepend(str(_ROOT / "training"))
    import pretrain_tiny

    overrides = [
        "preset=tiny",
        "image_size=null",
        "steps=2",
        "batch_size=2",
        "prompts_per_image=2",
        "warmup_steps=1",
        "checkpoint_every=1",
    ]
    args = ["--out", str(tmp_path), "--device", "cpu", "--num-workers", "0", "--set", *overrides]
    pretrain_tiny.main([*args, "--max-steps", "1"])
    assert (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "model").exists()
    pretrain_tiny.main(args)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, 1]
    assert all(np.isfinite(entry["loss"]) for entry in log)
    model = SamHFModel.from_pretrained(tmp_path / "model")
    assert model.config.mask_size == 32
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["recipe"]["steps"] == 2 and recipe["device"]
    sys.modules.pop("pretrain_tiny", None)


def test_cpu_recipe_sets_the_input_size_and_trains_under_bf16_autocast(tmp_path, monkeypatch):
    """The CPU recipe's own keys: `image_size` overrides the preset's input side, `autocast: bf16` trains."""
    monkeypatch.syspath_prepend(str(_ROOT / "training"))
    import pretrain_tiny

    config = _ROOT / "training" / "configs" / "pretrain_tiny_cpu.yaml"
    autocast_seen = []
    training_loss = pretrain_tiny._training_loss

    labels_side = []
    flash_enabled = []

    def recording_loss(model, batch, *args, **kwargs):
        autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        flash_enabled.append(torch.backends.cuda.flash_sdp_enabled())
        labels_side.append(batch["labels"].shape[-1])
        return training_loss(model, batch, *args, **kwargs)

    monkeypatch.setattr(pretrain_tiny, "_training_loss", recording_loss)
    overrides = [
        "preset=tiny",
        "image_size=96",
        "steps=1",
        "batch_size=2",
        "prompts_per_image=2",
        "warmup_steps=1",
    ]
    pretrain_tiny.main(
        [
            "--config",
            str(config),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--set",
            *overrides,
        ]
    )
    assert autocast_seen == [(True, torch.bfloat16)]
    assert flash_enabled == [False]  # the math SDPA kernel on CPU
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the loop
    assert labels_side == [96]  # loss_at_image_size: labels at the input side, not the mask side (24)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[0]["loss"])
    model = SamHFModel.from_pretrained(tmp_path / "model")
    vision = model.config.vision_config
    assert vision.image_size == 96 and model.config.mask_size == 4 * 96 // vision.patch_size
    recipe = json.loads((tmp_path / "recipe.json").read_text())["recipe"]
    assert recipe["autocast"] == "bf16" and recipe["image_size"] == 96
    with pytest.raises(ValueError, match="autocast must be null or 'bf16', got 'fp16'"):
        pretrain_tiny.main(
            ["--config", str(config), "--out", str(tmp_path / "bad"), "--set", "autocast=fp16"]
        )
    sys.modules.pop("pretrain_tiny", None)


def test_training_loss_scores_upsampled_logits_against_full_size_labels(monkeypatch):
    """`_loss` at the input size equals `sam_loss` of the bilinear upsampling the processor applies at inference."""
    monkeypatch.syspath_prepend(str(_ROOT / "training"))
    import pretrain_tiny

    from sam_hf.modeling.loss import sam_loss
    from sam_hf.modeling.modeling_sam_hf import SamHFOutput

    torch.manual_seed(0)
    output = SamHFOutput(pred_masks=torch.randn(2, 3, 1, 8, 8), iou_scores=torch.rand(2, 3, 1))
    labels = (torch.rand(2, 3, 16, 16) > 0.5).float()
    weights = {"focal_weight": 20.0, "dice_weight": 1.0}
    upsampled = torch.nn.functional.interpolate(
        output.pred_masks[:, :, 0], (16, 16), mode="bilinear", align_corners=False
    )[:, :, None]
    expected = sam_loss(upsampled, output.iou_scores, labels)
    processor = SamHFProcessor(image_size=16, mask_size=8)
    assert pretrain_tiny._loss(output, labels, weights, processor).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    small = (torch.rand(2, 3, 8, 8) > 0.5).float()
    assert pretrain_tiny._loss(
        output, small, {"focal_weight": 1.0, "dice_weight": 2.0}, processor
    ).item() == (
        pytest.approx(sam_loss(output.pred_masks, output.iou_scores, small, 1.0, 2.0).item(), rel=1e-6)
    )
    sys.modules.pop("pretrain_tiny", None)

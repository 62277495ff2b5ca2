"""Tests for sam_hf.training.loop (accelerate loop) and training.embeddings (embedding cache)."""

import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sam_hf import SamHFModel
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.training.collator import add_example_index
from sam_hf.training.embeddings import cache_image_embeddings
from sam_hf.training.loop import FinetuneConfig, finetune, latest_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_dataset(path, num_rows=8, size=48):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(num_rows):
        label = np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size // 2, 2)
        label[y : y + 16, x : x + 18] = 1
        label[2:8, 30:44] = 2
        image = np.full((size, size, 3), 30, np.uint8)
        image[label > 0] = 200
        images.append(image)
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(path))
    return str(path)


@pytest.fixture
def job(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "base")
    return {"model": str(tmp_path / "base"), "dataset": _write_dataset(tmp_path / "data")}


def _config(job, output_dir, **overrides):
    fields = dict(
        job,
        output_dir=str(output_dir),
        lora_r=4,
        batch_size=2,
        max_steps=8,
        learning_rate=2e-2,
        max_prompts=2,
        modules_to_save=["iou_prediction_head"],
        cpu=True,
        cache_dir=str(output_dir) + "-cache",
    )
    return FinetuneConfig(**(fields | overrides))


def test_loop_trains_and_saves_adapter_and_merged(job, tmp_path):
    summary = finetune(_config(job, tmp_path / "out", prompt_types=["box"], max_steps=12))
    assert summary["steps"] == 12
    assert np.mean(summary["losses"][-3:]) < np.mean(summary["losses"][:3])
    merged = SamHFModel.from_pretrained(summary["merged_dir"])
    base = SamHFModel.from_pretrained(job["model"])
    for name, tensor in base.state_dict().items():
        if not name.startswith("mask_decoder."):
            assert torch.equal(merged.state_dict()[name], tensor), name
    assert os.path.exists(tmp_path / "out" / "adapter_model.safetensors")


def test_resume_is_exact(job, tmp_path):
    full = finetune(_config(job, tmp_path / "full", checkpoint_every=3))
    interrupted = _config(job, tmp_path / "cut", checkpoint_every=3)
    assert finetune(interrupted, max_steps_this_run=5)["steps"] == 5
    assert latest_checkpoint(str(tmp_path / "cut")).endswith("step-3")
    os.makedirs(tmp_path / "cut" / "checkpoints" / "tmp-step-6")  # a half-written checkpoint is ignored
    assert latest_checkpoint(str(tmp_path / "cut")).endswith("step-3")
    resumed = finetune(interrupted, resume_from_checkpoint="latest")
    assert resumed["steps"] == full["steps"] == 8
    expected = load_file(tmp_path / "full" / "adapter_model.safetensors")
    actual = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-7)


def test_embedding_cache_reused_and_invalidated(tiny_model, tmp_path, monkeypatch):
    dataset = add_example_index(datasets.load_from_disk(_write_dataset(tmp_path / "data", num_rows=3)))
    processor = SamHFProcessor.from_model_config(tiny_model.config)
    calls = []
    original = tiny_model.get_image_embeddings
    monkeypatch.setattr(tiny_model, "get_image_embeddings", lambda x: calls.append(len(x)) or original(x))
    first = cache_image_embeddings(dataset, tiny_model, processor, str(tmp_path / "cache"))
    assert sum(calls) == 3
    assert first[0]["image_embeddings"].shape == (tiny_model.config.mask_decoder_config.hidden_size, 8, 8)
    cache_image_embeddings(dataset, tiny_model, processor, str(tmp_path / "cache"))
    assert sum(calls) == 3  # reused
    other = SamHFProcessor(image_size=128, mask_size=32, pixel_mean=(0.0, 0.0, 0.0))
    cache_image_embeddings(dataset, tiny_model, other, str(tmp_path / "cache"))
    assert sum(calls) == 6  # preprocessing changed
    with torch.no_grad():
        next(tiny_model.image_encoder.parameters()).add_(1.0)
    cache_image_embeddings(dataset, tiny_model, processor, str(tmp_path / "cache"))
    assert sum(calls) == 9  # encoder weights changed


@pytest.mark.slow
def test_accelerate_launch_two_processes(job, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {job['model']}\ndataset: {job['dataset']}\noutput_dir: {tmp_path / 'ddp'}\n"
        "lora_r: 4\nbatch_size: 2\nmax_steps: 3\nmax_prompts: 2\ncpu: true\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",  # = `accelerate launch`, as documented in training/finetune.py
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        "2",
        os.path.join(REPO, "training", "finetune.py"),
        "--config",
        str(config),
    ]
    env["CUDA_VISIBLE_DEVICES"] = ""  # two CPU processes
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'num_processes': 2" in result.stdout, result.stdout[-2000:]  # a world of two really trained
    assert os.path.exists(tmp_path / "ddp" / "adapter_model.safetensors")
    assert os.path.exists(tmp_path / "ddp" / "merged" / "model.safetensors")


def test_correction_clicks_feed_the_previous_mask_and_a_click_back(tiny_model, tmp_path):
    from sam_hf.processing_sam_hf import SamHFProcessor
    from sam_hf.training.collator import SamTrainingCollator, add_correction_click

    label = np.zeros((48, 48), np.uint8)
    label[6:30, 10:40] = 1
    label[34:46, 4:20] = 2
    image = np.where(label[..., None] > 0, 220, 30).astype(np.uint8).repeat(3, axis=-1)
    processor = SamHFProcessor.from_model_config(tiny_model.config)
    collator = SamTrainingCollator(processor, prompt_types=["box"], max_prompts=3)
    batch = collator([{"image": image, "label": label, "example_index": 0}])
    output = tiny_model(**batch)
    following = add_correction_click(
        batch, output.pred_masks, output.iou_scores, output.image_embeddings, np.random.default_rng(0), 128
    )
    assert "pixel_values" not in following and following["image_embeddings"].shape == (1, 32, 8, 8)
    assert following["input_masks"].shape == (1, 2, 32, 32)  # two instances, so two prompts
    best = output.iou_scores.argmax(-1)
    assert torch.equal(following["input_masks"][0, 1], output.pred_masks[0, 1, best[0, 1]].detach())
    assert following["input_points"].shape == (1, 2, 1, 2)  # box prompts had no points: the click is first
    assert set(following["input_labels"].flatten().tolist()) <= {0, 1}
    assert (following["input_points"] >= 0).all() and (following["input_points"] < 128).all()
    second = tiny_model(**following, multimask_output=False)
    assert second.pred_masks.shape == (1, 2, 1, 32, 32) and second.loss.isfinite()


def test_loop_with_correction_clicks_trains(job, tmp_path):
    summary = finetune(_config(job, tmp_path / "clicks", correction_clicks=1, max_steps=8))
    assert summary["steps"] == 8
    assert np.mean(summary["losses"][-3:]) < np.mean(summary["losses"][:3])

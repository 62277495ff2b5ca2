"""Tests for sam_hf.training.loop (accelerate loop) and training.embeddings (embedding cache)."""

import json
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
from sam_hf.training.loop import (
    TRAIN_LOG_NAME,
    FinetuneConfig,
    finetune,
    latest_checkpoint,
    launched_world_size,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_dataset(path, num_rows=8, size=48, test_rows=0, empty=False):
    """Rows of two rectangles (label ids 1, 2; all-zero labels when `empty`); with `test_rows`, a saved
    DatasetDict whose `test` split holds the first `test_rows` rows."""
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
        labels.append(np.zeros_like(label) if empty else label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    if test_rows:
        dataset = datasets.DatasetDict({"train": dataset, "test": dataset.select(range(test_rows))})
    dataset.save_to_disk(str(path))
    return str(path)


def _read_log(output_dir):
    with open(os.path.join(output_dir, TRAIN_LOG_NAME)) as f:
        return [json.loads(line) for line in f]


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
    # The log keeps the steps up to the checkpoint, then the resumed ones: each step once, same losses.
    log, full_log = _read_log(tmp_path / "cut"), _read_log(tmp_path / "full")
    assert [r["step"] for r in log] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in log], [r["loss"] for r in full_log], rtol=1e-5)
    assert [r["lr"] for r in log] == [r["lr"] for r in full_log]
    expected = load_file(tmp_path / "full" / "adapter_model.safetensors")
    actual = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-7)


def test_embedding_cache_reused_and_invalidated(tiny_model, tmp_path, monkeypatch):
    dataset = add_example_index(datasets.load_from_disk(_write_dataset(tmp_path / "data", num_rows=3)))
    processor = SamHFProcessor.from_model_config(tiny_model.config)
    calls = []
    original = tiny_model.get_image_features
    monkeypatch.setattr(tiny_model, "get_image_features", lambda x: calls.append(len(x)) or original(x))
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


def test_embedding_cache_key_covers_a_tiny_vit_encoder_and_its_buffers():
    """TinyViT holds 0-dim buffers (batch norm's `num_batches_tracked`); its running statistics change
    the embeddings, so they change the key too."""
    from sam_hf import SamHFConfig
    from sam_hf.training.embeddings import embedding_cache_key

    model = SamHFModel(SamHFConfig.from_preset("tiny_vit_t")).eval()
    processor = SamHFProcessor.from_model_config(model.config)
    assert any(t.dim() == 0 for t in model.image_encoder.state_dict().values())
    key = embedding_cache_key(model, processor)
    assert key == embedding_cache_key(model, processor)
    norm = next(m for m in model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.running_mean.add_(1.0)
    assert embedding_cache_key(model, processor) != key


def test_embedding_cache_holds_every_image_feature_of_an_hq_model(tiny_model, tmp_path):
    """SAM-HQ's decoder also takes the encoder's early feature: the cache holds it, the key covers the feature
    set (the same encoder weights behind SAM's decoder give another key), and the collator passes it on."""
    from sam_hf import SamHFConfig
    from sam_hf.training.collator import SamTrainingCollator
    from sam_hf.training.embeddings import embedding_cache_key

    torch.manual_seed(0)
    hq = SamHFModel(SamHFConfig.from_preset("tiny_hq")).eval()
    hq.image_encoder.load_state_dict(tiny_model.image_encoder.state_dict())
    processor = SamHFProcessor.from_model_config(hq.config)
    assert embedding_cache_key(hq, processor) != embedding_cache_key(tiny_model, processor)
    dataset = add_example_index(datasets.load_from_disk(_write_dataset(tmp_path / "data", num_rows=2)))
    cached = cache_image_embeddings(dataset, hq, processor, str(tmp_path / "cache"))
    pixel_values = processor.preprocess_images([np.asarray(dataset[1]["image"])])[0]
    with torch.inference_mode():
        expected = hq.get_image_features(pixel_values)
    assert set(expected) == {"image_embeddings", "intermediate_embeddings"}
    for name, feature in expected.items():  # cached from a batch of two: float32 summation order, 1e-5
        torch.testing.assert_close(cached[1][name], feature[0], rtol=0, atol=1e-5)
    collator = SamTrainingCollator(
        processor, max_prompts=2, use_cached_embeddings=True, image_feature_names=hq.image_feature_names
    )
    batch = collator([cached[0], cached[1]])
    assert "pixel_values" not in batch
    without = cached.remove_columns("intermediate_embeddings")
    with pytest.raises(ValueError, match="cached 'intermediate_embeddings' column"):
        collator([without[0]])
    assert batch["intermediate_embeddings"].shape == (2, *expected["intermediate_embeddings"].shape[1:])
    assert hq(**batch).loss.isfinite()


def test_train_log_records_every_step(job, tmp_path):
    summary = finetune(_config(job, tmp_path / "out", max_steps=4, learning_rate=1e-3))
    log = _read_log(tmp_path / "out")
    assert summary["train_log"] == str(tmp_path / "out" / TRAIN_LOG_NAME)
    assert [set(r) for r in log] == [{"step", "loss", "lr", "elapsed_s"}] * 4
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["loss"] for r in log] == summary["losses"]
    np.testing.assert_allclose([r["lr"] for r in log], [1e-3, 7.5e-4, 5e-4, 2.5e-4])  # linear decay
    elapsed = [r["elapsed_s"] for r in log]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0


def test_tensorboard_gets_the_loss_when_installed(job, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = finetune(_config(job, tmp_path / "out", max_steps=2))
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [1, 2]
    np.testing.assert_allclose([e.value for e in scalars], summary["losses"], rtol=1e-6)


def test_train_split_without_usable_rows_stops_before_caching(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    dataset = _write_dataset(tmp_path / "data", num_rows=6, empty=True)
    config = FinetuneConfig(
        model=str(tmp_path / "base"), dataset=dataset, output_dir=str(tmp_path / "out"), cpu=True
    )
    with pytest.raises(ValueError, match=r"got 0 of 6") as error:
        finetune(config)
    assert dataset in str(error.value) and "empty_mask" in str(error.value)
    assert not (tmp_path / "out" / "embedding_cache").exists()


def test_launched_world_size_reads_the_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert launched_world_size() == 3


def test_a_world_smaller_than_the_launch_is_an_error(job, tmp_path, monkeypatch):
    # Two processes launched, but an accelerator that accelerate cannot group them on: each would train alone.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"started 2 processes but they formed a world of 1"):
        finetune(_config(job, tmp_path / "out", cpu=False))


@pytest.mark.slow
def test_accelerate_launch_two_processes_is_one_run(tmp_path, tiny_model):
    """The README's command on a machine without GPUs: one world of two, the same artefacts as the CLI."""
    tiny_model.save_pretrained(tmp_path / "base")
    dataset = _write_dataset(tmp_path / "data", num_rows=8, test_rows=2)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {tmp_path / 'base'}\ndataset: {dataset}\noutput_dir: {tmp_path / 'ddp'}\n"
        "lora_r: 4\nbatch_size: 2\nmax_steps: 3\nmax_prompts: 2\nlearning_rate: 3.0e-4\n"
        "eval_prompts: [box]\n"
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
    env["CUDA_VISIBLE_DEVICES"] = ""  # a machine without GPUs
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("'num_processes': 2") == 2, result.stdout[-2000:]  # one world of two
    out = tmp_path / "ddp"
    for name in ("adapter_model.safetensors", "merged/model.safetensors", "training_summary.json",
                 "eval_results.json", "README.md", TRAIN_LOG_NAME):  # fmt: skip
        assert (out / name).is_file(), name
    assert json.loads((out / "training_summary.json").read_text())["num_processes"] == 2
    assert set(json.loads((out / "eval_results.json").read_text())["runs"]) == {"base", "finetuned"}
    # One log line per step, written once, with the single-process schedule (not decayed twice as fast).
    log = _read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    np.testing.assert_allclose([r["lr"] for r in log], [3e-4, 2e-4, 1e-4])


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
    features = {"image_embeddings": output.image_embeddings}
    following = add_correction_click(
        batch, output.pred_masks, output.iou_scores, features, np.random.default_rng(0), 128
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


def test_loop_trains_an_hq_model_from_cached_features_with_correction_clicks(tmp_path):
    """SAM-HQ through the loop: its two image features cached and reused by the correction passes, the HQ
    modules trained in full beside the LoRA adapters and saved with them, the merged model an HQ model."""
    from sam_hf import SamHFConfig
    from sam_hf.hub import load_model

    torch.manual_seed(0)
    SamHFModel(SamHFConfig.from_preset("tiny_hq")).save_pretrained(tmp_path / "base")
    job = {"model": str(tmp_path / "base"), "dataset": _write_dataset(tmp_path / "data")}
    summary = finetune(_config(job, tmp_path / "hq", correction_clicks=1, max_steps=4, modules_to_save=None))
    assert summary["steps"] == 4 and all(np.isfinite(summary["losses"]))
    cached = datasets.Dataset.from_file(
        next(str(path) for path in (tmp_path / "hq-cache").glob("embeddings-*.arrow"))
    )
    assert {"image_embeddings", "intermediate_embeddings"} <= set(cached.column_names)
    adapter = json.loads((tmp_path / "hq" / "adapter_config.json").read_text())
    hq_modules = ["hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature"]
    assert sorted(adapter["modules_to_save"]) == sorted(f"mask_decoder.{name}" for name in hq_modules)
    saved = load_file(tmp_path / "hq" / "adapter_model.safetensors")
    for name in hq_modules:
        assert any(f"mask_decoder.{name}." in key for key in saved), name
    base = SamHFModel.from_pretrained(tmp_path / "base")
    merged, _, _ = load_model(tmp_path / "hq", merge_adapter=True, verbose=False)
    assert merged.config.mask_decoder_config.decoder_type == "hq"
    assert not torch.equal(merged.mask_decoder.hf_token.weight, base.mask_decoder.hf_token.weight)

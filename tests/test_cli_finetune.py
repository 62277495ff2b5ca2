"""Tests for `sam-hf finetune` (sam_hf.cli.finetune)."""

import argparse
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from huggingface_hub import ModelCard

import sam_hf.hub.push
from sam_hf.cli import build_parser, main
from sam_hf.cli.finetune import parse_prompt_types
from sam_hf.training import FinetuneConfig


def test_finetune_command_writes_adapter_and_merged(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 8:30] = 3
    image = np.where(label[..., None] > 0, 210, 20).astype(np.uint8).repeat(3, axis=-1)
    features = datasets.Features({"img": datasets.Image(), "seg": datasets.Image()})
    datasets.Dataset.from_dict({"img": [image] * 4, "seg": [label] * 4}, features=features).save_to_disk(
        str(tmp_path / "data")
    )
    code = main(
        ["finetune", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "data"),
         "--image-column", "img", "--mask-column", "seg", "--prompt", "box,point", "--lora-r", "4",
         "--max-steps", "2", "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    assert os.path.exists(tmp_path / "out" / "adapter_model.safetensors")
    assert os.path.exists(tmp_path / "out" / "merged" / "model.safetensors")
    assert os.path.exists(tmp_path / "out" / "preprocessor_config.json")


def test_prompt_types_are_validated():
    assert parse_prompt_types("box, point") == ["box", "point"]
    with pytest.raises(argparse.ArgumentTypeError, match="--prompt"):
        parse_prompt_types("scribble")


def test_eval_split_none_turns_evaluation_off():
    parse = build_parser().parse_args
    assert parse(["finetune", "--dataset", "d"]).eval_split == "auto"
    assert parse(["finetune", "--dataset", "d", "--eval-split", "none"]).eval_split is None


def test_finetune_defaults_are_finetune_configs(monkeypatch):
    """`sam-hf finetune` with only the required arguments runs `FinetuneConfig`'s defaults, field by field."""
    import sam_hf.training.job

    runs = []
    monkeypatch.setattr(sam_hf.training.job, "run_finetune", lambda config, **kwargs: runs.append(config))
    assert main(["finetune", "--model", "sam-hf-tiny", "--dataset", "d"]) == 0
    assert runs == [FinetuneConfig(model="sam-hf-tiny", dataset="d")]


def _splits_dataset(path):
    """A saved DatasetDict with train and test splits of one rectangle (label id 3) per image."""
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 8:30] = 3
    image = np.where(label[..., None] > 0, 210, 20).astype(np.uint8).repeat(3, axis=-1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    split = datasets.Dataset.from_dict({"image": [image] * 4, "label": [label] * 4}, features=features)
    datasets.DatasetDict({"train": split, "test": split.select(range(2))}).save_to_disk(str(path))


class _RecordingApi:
    """Stands in for HfApi: records the repo creation and the commit; `fail` makes the commit raise."""

    def __init__(self, fail: bool = False):
        self.fail, self.commits, self.uploaded = fail, [], {}

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def repo_info(self, repo_id, **kwargs):
        return type("Info", (), {"sha": "c" * 40})()

    def create_commit(self, repo_id, operations, **kwargs):
        if self.fail:
            raise ConnectionError("connection reset")
        self.commits.append(kwargs)
        self.uploaded = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        return type("Commit", (), {"commit_url": "https://hub/commit/c", "pr_url": None})()


def test_finetune_measures_before_and_after_writes_the_card_and_pushes_one_commit(
    tiny_model, tmp_path, monkeypatch, capsys
):
    tiny_model.save_pretrained(tmp_path / "base")
    _splits_dataset(tmp_path / "data")
    token = "hf_" + "s3cr3t" * 6
    monkeypatch.setenv("HF_TOKEN", token)
    api = _RecordingApi()
    monkeypatch.setattr(sam_hf.hub.push, "HfApi", lambda **kwargs: api)
    out = tmp_path / "out"
    code = main(
        ["finetune", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "data"), "--lora-r", "4",
         "--max-steps", "2", "--eval-prompt", "point,box", "--output-dir", str(out),
         "--push-to-hub", "user/sam-lora"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["split"] == "test" and results["num_images"] == 2  # the default eval split
    assert set(results["runs"]) == {"base", "finetuned"}
    for run in results["runs"].values():
        assert set(run["results"]) == {"point", "box"}
        assert 0.0 <= run["results"]["box"]["mean_iou"] <= 1.0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable_parameters"] > 0
    assert summary["total_parameters"] > summary["trainable_parameters"]
    card = ModelCard.load(out / "README.md")
    box_after = results["runs"]["finetuned"]["results"]["box"]["mean_iou"]
    assert f"{box_after:.4f}"[:5] in card.text  # the measured number, not a placeholder
    assert f"{summary['trainable_parameters']:,}" in card.text
    # One commit, parented on the branch head, carrying adapter, processor config, results and card.
    assert len(api.commits) == 1 and api.commits[0]["parent_commit"] == "c" * 40
    assert {"adapter_model.safetensors", "adapter_config.json", "preprocessor_config.json", "README.md",
            "eval_results.json", "training_summary.json"} <= set(api.uploaded)  # fmt: skip
    captured = capsys.readouterr()
    assert "fine-tuning" in captured.err and "loss=" in captured.err  # the progress bar shows the loss
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[-1]["loss"] == summary["final_loss"]
    assert token not in captured.out + captured.err
    assert all(token.encode() not in data for data in api.uploaded.values())
    assert all(token.encode() not in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_finetune_push_failure_keeps_the_output_and_says_how_to_retry(
    tiny_model, tmp_path, monkeypatch, capsys
):
    tiny_model.save_pretrained(tmp_path / "base")
    _splits_dataset(tmp_path / "data")
    monkeypatch.setattr(sam_hf.hub.push, "HfApi", lambda **kwargs: _RecordingApi(fail=True))
    out = tmp_path / "out"
    code = main(
        ["finetune", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "data"), "--lora-r", "4",
         "--max-steps", "1", "--eval-split", "test", "--eval-max-images", "1",
         "--eval-prompt", "box", "--output-dir", str(out), "--push-to-hub", "user/sam-lora"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "ConnectionError: connection reset" in err
    assert f"Retry with: sam-hf push {out} --repo-id user/sam-lora" in err
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()


def test_finetune_without_eval_split_says_nothing_was_measured(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "base")
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 8:30] = 1
    image = np.where(label[..., None] > 0, 210, 20).astype(np.uint8).repeat(3, axis=-1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": [image] * 2, "label": [label] * 2}, features=features).save_to_disk(
        str(tmp_path / "data")
    )
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "data"),
                 "--lora-r", "4", "--max-steps", "1", "--output-dir", str(out)]) == 0  # fmt: skip
    assert not (out / "eval_results.json").exists()
    assert "nothing was measured" in capsys.readouterr().out
    assert "not measured" in ModelCard.load(out / "README.md").text


@pytest.fixture
def located(monkeypatch):
    """The portable name of every model argument `locate_model` resolves (a `ResolvedModel` it is given back is
    not resolved again), wherever it is looked up."""
    import sam_hf.hub
    import sam_hf.hub.loading

    names, locate = [], sam_hf.hub.loading.locate_model

    def counting_locate(name_or_path, **kwargs):
        if not isinstance(name_or_path, sam_hf.hub.ResolvedModel):
            names.append(sam_hf.hub.portable_model_name(name_or_path))
        return locate(name_or_path, **kwargs)

    monkeypatch.setattr(sam_hf.hub.loading, "locate_model", counting_locate)
    monkeypatch.setattr(sam_hf.hub, "locate_model", counting_locate)
    return names


@pytest.mark.parametrize("lora_r", ["4", "0"])
def test_finetune_locates_each_model_once(tiny_model, tmp_path, located, lora_r):
    """One run resolves `--model` once (a Hub id costs one request each time) and its output once, through
    training, the summary and the before/after evaluation."""
    tiny_model.save_pretrained(tmp_path / "base")
    _splits_dataset(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "data"),
                 "--lora-r", lora_r, "--max-steps", "1", "--eval-max-images", "1", "--eval-prompt", "box",
                 "--output-dir", str(out)]) == 0  # fmt: skip
    assert located.count(str(tmp_path / "base")) == 1
    assert all(located.count(name) == 1 for name in located), located
    assert (out / "training_summary.json").is_file() and (out / "eval_results.json").is_file()


def test_run_finetune_resolves_a_model_name_once(tiny_model, tmp_path, located):
    """The Python API takes `FinetuneConfig.model` as a plain name and resolves it once itself."""
    from sam_hf.training.job import run_finetune

    tiny_model.save_pretrained(tmp_path / "base")
    _splits_dataset(tmp_path / "data")
    config = FinetuneConfig(
        model=str(tmp_path / "base"),
        dataset=str(tmp_path / "data"),
        lora_r=4,
        max_steps=1,
        eval_max_images=1,
        eval_prompts=["box"],
        output_dir=str(tmp_path / "out"),
    )
    assert run_finetune(config)["eval_results"] is not None
    assert located.count(str(tmp_path / "base")) == 1
    assert all(located.count(name) == 1 for name in located), located

"""Model card and Hub push: card contents come only from the run's files; pushes are one guarded commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, ModelCard
from safetensors.torch import save_file

import sam_hf.hub.push
from sam_hf.cli import main
from sam_hf.evaluation import EvaluationProtocol
from sam_hf.hub import (
    CARD_MARKER,
    TRAINING_SUMMARY_NAME,
    HubPushError,
    build_commit_operations,
    build_model_card,
    card_template_path,
    load_pretrained,
    load_processor,
    push_to_hub,
)

TOKEN = "hf_SENTINELtokenSENTINEL0123456789"


def _eval_results(runs=("base", "finetuned")) -> dict:
    results = {
        "base": {
            "box": {"mean_iou": 0.5, "mean_dice": 0.625, "num_objects": 4},
            "clicks": {
                "mean_iou": 0.7,
                "mean_dice": 0.8,
                "num_objects": 4,
                "miou_per_click": [0.4, 0.6, 0.7],
                "noc@85": 3.0,
                "noc@90": 3.0,
                "nof@85": 4,
                "nof@90": 4,
            },
        },
        "finetuned": {"box": {"mean_iou": 0.75, "mean_dice": 0.8125, "num_objects": 4}},
    }
    return {
        "protocol": EvaluationProtocol(max_clicks=3).to_dict(),
        "dataset": "someone/tiny-shapes",
        "split": "test",
        "num_images": 2,
        "runs": {name: {"model": name, "eval_runtime_s": 1.0, "results": results[name]} for name in runs},
    }


@pytest.fixture
def adapter_folder(tmp_path) -> Path:
    """A PEFT-style output folder: adapter config + weights (2*8*4 + 8 = 72 numbers), results, a pickle."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "base_model_name_or_path": str(tmp_path / "base"),
                "r": 4,
                "lora_alpha": 8,
                "lora_dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
                "modules_to_save": None,
            }
        )
    )
    save_file(
        {"a.lora_A.weight": torch.zeros(4, 8), "a.lora_B.weight": torch.zeros(8, 4), "b": torch.zeros(8)},
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_size": 128}))
    (folder / "eval_results.json").write_text(json.dumps(_eval_results()))
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"x")
    return folder


class FakeApi:
    """Records the calls push_to_hub makes; `fail_on` names a method that raises."""

    def __init__(self, fail_on: str | None = None, token: str | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_on = fail_on
        self.token = token
        self.uploaded: dict[str, bytes] = {}

    def _record(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        if name == self.fail_on:
            raise ConnectionError(f"{name} exploded")

    def create_repo(self, *args, **kwargs):
        self._record("create_repo", args, kwargs)
        return type("RepoUrl", (), {"repo_id": f"user/{args[0].split('/')[-1]}"})()

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", args, kwargs)

    def repo_info(self, *args, **kwargs):
        self._record("repo_info", args, kwargs)
        return type("Info", (), {"sha": "a" * 40})()

    def create_commit(self, repo_id, operations, **kwargs):
        self._record("create_commit", (repo_id, operations), kwargs)
        self.uploaded = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        return type("Commit", (), {"commit_url": "https://hub/commit/b", "pr_url": None})()


def test_template_ships_in_package():
    path = card_template_path()
    assert path.name == "sam_hf_finetuned.md" and "{{ card_data }}" in path.read_text()
    with pytest.raises(ValueError, match="name must be a model card template"):
        card_template_path("nope")


def test_card_renders_loads_back_and_parses_model_index(adapter_folder, tmp_path):
    card = build_model_card(adapter_folder, repo_id="user/sam-lora")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert CARD_MARKER in loaded.text
    # model-index holds the fine-tuned run only, each metric measured there
    results = {(r.metric_config, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert results == {("box", "mean_iou"): 0.75, ("box", "mean_dice"): 0.8125}
    assert {r.dataset_split for r in loaded.data.eval_results} == {"test"}
    text = loaded.text
    assert loaded.data.datasets is None  # training data unknown without a training summary...
    assert "| Fine-tuning data | not recorded |" in text  # ...and not confused with the evaluation data
    assert loaded.data.base_model is None  # a local path is no Hub id: kept out of metadata
    assert (
        "| Prompt | Metric | base model | fine-tuned |\n|---|---|---|---|\n| box (4 objects) | mIoU | 0.5000 | 0.7500 |"
        in text
    )
    assert "| clicks (4 objects) | mIoU@1 click | 0.4000 | not measured |" in text
    assert str(tmp_path) not in card.content  # local paths are not published
    assert "| Base model | `base (local)` |" in text
    # clicks were measured for the base only: the fine-tuned column must not invent numbers
    assert "| clicks (4 objects) | NoC@90 | 3.00 | not measured |" in text
    assert "| clicks (4 objects) | mIoU@3 clicks | 0.7000 | not measured |" in text
    assert "| clicks (4 objects) | mIoU |" not in text  # the last click's mIoU is not repeated
    assert "72 (counted in adapter_model.safetensors)" in text
    assert "| Training time | not measured |" in text
    assert "| target_modules | `q_proj`, `v_proj` |" in text
    assert 'PeftModel.from_pretrained(base, "user/sam-lora")' in text and "merge_and_unload" in text


def test_card_without_results_claims_no_numbers(tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    card = build_model_card(folder)
    assert card.data.eval_results is None
    assert "Not measured: no evaluation results" in card.text
    assert "| Trainable parameters | not measured |" in card.text
    assert "PeftModel" not in card.text
    numbers = [tok for tok in card.text.replace("|", " ").split() if tok.replace(".", "").isdigit()]
    assert numbers == []


def test_card_uses_training_summary(adapter_folder):
    summary = {
        "base_model": "facebook/sam-vit-base",
        "dataset": "someone/train-shapes",
        "dataset_split": "train",
        "train_runtime_s": 125.0,
        "trainable_parameters": 1000,
        "total_parameters": 100000,
        "hyperparameters": {"learning_rate": 0.0001},
    }
    (adapter_folder / TRAINING_SUMMARY_NAME).write_text(json.dumps(summary))
    adapter_config = json.loads((adapter_folder / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "facebook/sam-vit-base"  # the base loading uses
    (adapter_folder / "adapter_config.json").write_text(json.dumps(adapter_config))
    card = build_model_card(adapter_folder)
    assert card.data.base_model == "facebook/sam-vit-base"
    assert card.data.datasets == ["someone/train-shapes"]
    assert "| Fine-tuning data | `someone/train-shapes`, split `train` |" in card.text
    assert "| Training time | 125.0 s (2.1 min) |" in card.text
    assert "| Trainable parameters | 1,000 of 100,000 (1.00%) |" in card.text
    assert "| learning_rate | 0.0001 |" in card.text


def test_card_names_the_sam_variant_and_its_licence(adapter_folder, tmp_path):
    """The variant comes from the run's summary or the model's config (a merged Light HQ-SAM here); the
    licence is stated in the metadata and in words, with the caveat for a base trained by others."""
    from sam_hf import SamHFConfig

    assert "| SAM variant | not recorded |" in build_model_card(adapter_folder).text
    summary = {"image_encoder": "vit", "mask_decoder": "sam"}
    (adapter_folder / TRAINING_SUMMARY_NAME).write_text(json.dumps(summary))
    assert (
        "| SAM variant | image encoder `vit`, mask decoder `sam` |" in build_model_card(adapter_folder).text
    )
    folder = tmp_path / "light_hq"
    SamHFConfig.from_preset("tiny_vit_t_hq").save_pretrained(folder)
    card = build_model_card(folder, repo_id="user/light-hq")
    assert "| SAM variant | image encoder `tiny_vit`, mask decoder `hq` |" in card.text
    assert card.data.license == "apache-2.0"
    assert "Apache-2.0, the licence of `sam_hf` and of the official SAM, SAM-HQ and MobileSAM" in card.text
    assert "may carry its own licence" in card.text


def test_commit_operations_stage_publishable_files_only(adapter_folder, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    operations = build_commit_operations(adapter_folder, staging, "user/sam-lora")
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    assert [op.path_in_repo for op in operations] == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "eval_results.json",
        "preprocessor_config.json",
    ]
    assert not (adapter_folder / "README.md").exists()  # the output folder is left as it was


def test_user_readme_is_kept_generated_one_is_refreshed(adapter_folder, tmp_path):
    (adapter_folder / "README.md").write_text("# My own notes\n")
    staging = tmp_path / "s1"
    staging.mkdir()
    build_commit_operations(adapter_folder, staging)
    assert (staging / "README.md").read_text() == "# My own notes\n"

    (adapter_folder / "README.md").write_text(f"---\n---\n{CARD_MARKER}\nstale card\n")
    staging = tmp_path / "s2"
    staging.mkdir()
    build_commit_operations(adapter_folder, staging)
    assert "stale card" not in (staging / "README.md").read_text()
    assert "## Evaluation" in (staging / "README.md").read_text()


def test_blank_peft_card_is_replaced_edited_one_kept(trained_adapter, tmp_path):
    folder, _ = trained_adapter
    assert "library_name: peft" in (folder / "README.md").read_text()  # PeftModel.save_pretrained wrote it
    staging = tmp_path / "s1"
    staging.mkdir()
    build_commit_operations(folder, staging)
    assert CARD_MARKER in (staging / "README.md").read_text()

    edited = (folder / "README.md").read_text().replace("## Uses", "## Uses\n\nOnly for cats.", 1)
    (folder / "README.md").write_text(edited)
    staging = tmp_path / "s2"
    staging.mkdir()
    build_commit_operations(folder, staging)
    assert (staging / "README.md").read_text() == edited


def test_commit_operations_reject_folder_without_model(tmp_path):
    with pytest.raises(ValueError, match="adapter_config.json"):
        build_commit_operations(tmp_path, tmp_path)


def test_dry_run_lists_files_without_network(adapter_folder):
    api = FakeApi()
    result = push_to_hub(adapter_folder, "sam-lora", dry_run=True, api=api)
    assert api.calls == []
    sizes = dict(result.files)
    assert sizes["adapter_model.safetensors"] == (adapter_folder / "adapter_model.safetensors").stat().st_size
    assert result.commit_url is None


def test_push_is_one_commit_on_resolved_branch_head(adapter_folder):
    api = FakeApi()
    result = push_to_hub(adapter_folder, "sam-lora", private=True, branch="exp", create_pr=True, api=api)
    names = [name for name, _, _ in api.calls]
    assert names == ["create_repo", "create_branch", "repo_info", "create_commit"]
    assert api.calls[0][2] == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert api.calls[1][2]["exist_ok"] is True and api.calls[1][2]["branch"] == "exp"
    assert api.calls[2][2]["revision"] == "exp"
    commit_kwargs = api.calls[3][2]
    assert commit_kwargs["parent_commit"] == "a" * 40
    assert commit_kwargs["revision"] == "exp" and commit_kwargs["create_pr"] is True
    assert api.calls[3][1][0] == "user/sam-lora"  # the namespaced id create_repo returned
    assert "README.md" in api.uploaded and result.commit_url == "https://hub/commit/b"
    assert result.repo_id == "user/sam-lora"


@pytest.mark.parametrize("fail_on", ["create_repo", "repo_info", "create_commit"])
def test_failed_push_raises_with_retry_hint_and_keeps_folder(adapter_folder, fail_on):
    before = sorted((p.name, p.stat().st_size) for p in adapter_folder.iterdir())
    with pytest.raises(HubPushError, match="Retry with: sam-hf push .* --repo-id .* --branch exp") as info:
        push_to_hub(adapter_folder, "sam-lora", branch="exp", api=FakeApi(fail_on=fail_on))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert sorted((p.name, p.stat().st_size) for p in adapter_folder.iterdir()) == before


def test_token_never_written_printed_or_uploaded(adapter_folder, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = FakeApi(token=TOKEN)
    push_to_hub(adapter_folder, "sam-lora", api=api)
    assert all(TOKEN.encode() not in data for data in api.uploaded.values())
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text
    for path in adapter_folder.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes()


def test_file_containing_token_is_refused(adapter_folder):
    (adapter_folder / "leaky_config.json").write_text(json.dumps({"hub_token": TOKEN}))
    api = FakeApi(token=TOKEN)
    with pytest.raises(HubPushError, match="leaky_config.json: it contains your Hub token") as info:
        push_to_hub(adapter_folder, "sam-lora", api=api)
    assert api.calls == [] and TOKEN not in str(info.value)


@pytest.fixture
def trained_adapter(tmp_path, tiny_model) -> tuple[Path, torch.nn.Module]:
    """A real LoRA adapter folder over a saved tiny base, with non-zero B so merging changes weights."""
    from peft import LoraConfig, get_peft_model

    from sam_hf import SamHFModel

    tiny_model.save_pretrained(tmp_path / "base")
    model = get_peft_model(
        SamHFModel.from_pretrained(tmp_path / "base"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", model.eval()


def test_load_pretrained_adapter_or_model(trained_adapter, tmp_path):
    from peft import PeftModel

    from sam_hf import SamHFModel

    folder, _ = trained_adapter
    assert isinstance(load_pretrained(folder), PeftModel)
    assert type(load_pretrained(tmp_path / "base")) is SamHFModel
    with pytest.raises(ValueError, match="has no config.json or adapter_config.json"):
        load_pretrained(tmp_path)


def test_load_processor_prefers_saved_config(trained_adapter, tmp_path):
    from sam_hf.processing_sam_hf import SamHFProcessor

    folder, _ = trained_adapter
    derived = load_processor(folder)  # nothing saved: from the base model's config (tiny: 128 / 32)
    assert (derived.image_size, derived.mask_size) == (128, 32)
    SamHFProcessor(image_size=128, mask_size=32, pixel_mean=(1.0, 2.0, 3.0)).save_pretrained(
        tmp_path / "base"
    )
    assert load_processor(folder).pixel_mean == (1.0, 2.0, 3.0)  # the base folder's saved processor
    SamHFProcessor(image_size=128, mask_size=32, pixel_mean=(4.0, 5.0, 6.0)).save_pretrained(folder)
    assert load_processor(folder).pixel_mean == (4.0, 5.0, 6.0)  # the adapter folder's own wins


def test_merged_upload_is_a_full_model_equal_to_the_adapter(trained_adapter, tmp_path):
    from sam_hf import SamHFModel

    folder, peft_model = trained_adapter
    staging = tmp_path / "staging"
    staging.mkdir()
    operations = build_commit_operations(folder, staging, "user/sam-merged", merge_adapter=True)
    paths = [op.path_in_repo for op in operations]
    code = [p for p in paths if p.endswith(".py")]  # modeling files, so the repo loads with trust_remote_code
    assert "modeling_sam_hf.py" in code and "configuration_sam_hf.py" in code
    assert [p for p in paths if p not in code] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",  # written from the model config: the folder had none
    ]
    merged = SamHFModel.from_pretrained(staging).eval()
    torch.manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(1, 3, 128, 128),
        "input_points": torch.rand(1, 2, 1, 2) * 128,
        "input_labels": torch.ones(1, 2, 1, dtype=torch.long),
    }
    with torch.inference_mode():
        expected, actual = peft_model(**inputs), merged(**inputs)
    # merging folds B @ A into the weights: equal up to float32 rounding
    torch.testing.assert_close(actual.pred_masks, expected.pred_masks, atol=1e-4, rtol=1e-4)
    card = (staging / "README.md").read_text()
    assert "LoRA adapter merged into the base model" in card and "PeftModel" not in card
    with pytest.raises(ValueError, match="merge_adapter needs an adapter folder"):
        build_commit_operations(tmp_path / "base", staging, merge_adapter=True)


def test_model_upload_carries_the_source_its_auto_map_names(tiny_model, tmp_path):
    from transformers import AutoModel, AutoProcessor

    from sam_hf.hub import save_model

    save_model(tiny_model, tmp_path / "model")
    (tmp_path / "model" / "notes.py").write_text("print('not named by any auto_map')\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    paths = [op.path_in_repo for op in build_commit_operations(tmp_path / "model", staging, "user/sam")]
    source = {"modeling_sam_hf.py", "configuration_sam_hf.py", "processing_sam_hf.py", "images.py"}
    assert source | {"mask_generation.py", "automatic_mask_generator.py"} <= set(paths)  # + the pipeline's
    assert "notes.py" not in paths
    # what the repo will hold loads through the Auto classes as the folder did
    assert AutoProcessor.from_pretrained(staging).to_dict() == load_processor(tmp_path / "model").to_dict()
    assert type(AutoModel.from_pretrained(staging)) is type(tiny_model)


# `sam-hf push`


def test_push_dry_run_prints_files_and_sizes(adapter_folder, capsys):
    assert (
        main(["push", str(adapter_folder), "--repo-id", "user/sam-lora", "--branch", "exp", "--dry-run"]) == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "would upload to user/sam-lora@exp:"
    size = (adapter_folder / "adapter_model.safetensors").stat().st_size
    assert any(
        line.split() == ["adapter_model.safetensors", f"{size:,}", "bytes"] for line in out.splitlines()
    )
    assert "training_args.bin" not in out and "checkpoint-1" not in out


def test_push_takes_token_from_environment_and_never_shows_it(adapter_folder, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    created = []

    def fake_hf_api(token=None, **kwargs):
        from huggingface_hub import get_token

        api = FakeApi(token=token or get_token())  # what HfApi() does: the environment's token
        created.append(api)
        return api

    monkeypatch.setattr(sam_hf.hub.push, "HfApi", fake_hf_api)
    assert main(["push", str(adapter_folder), "--repo-id", "sam-lora", "--private"]) == 0
    api = created[0]
    assert api.token == TOKEN  # the environment's token reaches the client...
    out = capsys.readouterr()
    assert "commit: https://hub/commit/b" in out.out
    assert TOKEN not in out.out + out.err + caplog.text  # ...and nothing else
    assert all(TOKEN.encode() not in data for data in api.uploaded.values())
    assert all(TOKEN.encode() not in p.read_bytes() for p in adapter_folder.rglob("*") if p.is_file())


def test_push_failure_exits_nonzero_with_retry_hint(adapter_folder, monkeypatch, capsys):
    monkeypatch.setattr(sam_hf.hub.push, "HfApi", lambda **kwargs: FakeApi(fail_on="create_commit"))
    assert main(["push", str(adapter_folder), "--repo-id", "sam-lora"]) == 1
    err = capsys.readouterr().err
    assert "ConnectionError: create_commit exploded" in err and "Retry with: sam-hf push" in err


@pytest.mark.parametrize("flag", ["--token", "--hub-token"])
def test_push_has_no_token_argument(adapter_folder, flag):
    with pytest.raises(SystemExit):
        main(["push", str(adapter_folder), "--repo-id", "x", flag, TOKEN])

"""One resolver for "a model" (sam_hf.hub.loading): every form loads, says what it is, and an adapter always
names its base portably (shipped name, Hub id, or a local path the card and push call out)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

import sam_hf.hub.push
from sam_hf import SamHFModel
from sam_hf.cli import main
from sam_hf.hub import (
    MODEL_KINDS,
    load_model,
    load_pretrained,
    load_processor,
    locate_model,
    portable_model_name,
    push_to_hub,
)
from sam_hf.modeling.checkpoint_io import save_meta_checkpoint, save_transformers_checkpoint
from sam_hf.pretrained import shipped_model_path


def _inputs(size: int = 128) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(1, 3, size, size, generator=generator),
        "input_points": torch.rand(1, 2, 1, 2, generator=generator) * size,
        "input_labels": torch.ones(1, 2, 1, dtype=torch.long),
    }


def _masks(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(**_inputs(model.config.vision_config.image_size)).pred_masks


def _lora_adapter(base_name: str, folder: Path) -> torch.nn.Module:
    """A LoRA adapter with non-zero B over the model `load_model(base_name)` gives, saved to `folder`."""
    from sam_hf.training.lora import apply_lora

    base, _, _ = load_model(base_name, verbose=False)
    model = apply_lora(base, r=2, verbose=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder, save_embedding_layers=False)  # SAM has no vocabulary to look up online
    return model.eval()


@pytest.fixture
def model_forms(tiny_model, tmp_path) -> dict[str, Path]:
    """The same tiny weights as a sam_hf folder, a transformers SAM folder and a Meta .pth file."""
    tiny_model.save_pretrained(tmp_path / "sam_hf")
    state_dict = tiny_model.state_dict()
    save_transformers_checkpoint(tiny_model.config, state_dict, tmp_path / "transformers")
    save_meta_checkpoint(state_dict, tmp_path / "meta.pth")
    return {
        "sam_hf": tmp_path / "sam_hf",
        "transformers": tmp_path / "transformers",
        "meta": tmp_path / "meta.pth",
    }


def test_every_local_form_loads_and_says_which(model_forms, tiny_model, capsys):
    expected = _masks(tiny_model)
    for kind, path in model_forms.items():
        model, processor, resolved = load_model(path)
        assert (resolved.kind, resolved.name, resolved.base) == (kind, str(path), None)
        assert model.name_or_path == str(path)  # what an adapter trained on it records as its base
        if kind != "meta":  # a .pth has no config: SAM's 8 decoder heads are assumed, the tiny preset has 2
            torch.testing.assert_close(_masks(model), expected, atol=1e-5, rtol=1e-5)
        assert processor.image_size == 128
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sam_hf:")]
        assert said == [f"sam_hf: loaded {resolved.describe()}"] and str(path) in said[0]
    assert set(MODEL_KINDS) >= {
        "shipped",
        "hub",
        "meta",
        "sam_hf",
        "transformers",
        "adapter",
        "finetune_output",
    }


def test_the_loaded_line_names_the_image_encoder_in_every_form(model_forms, tmp_path, capsys):
    """ViT (SAM), TinyViT (MobileSAM) and SAM-HQ models, plain, as an adapter and merged: the one line says
    which image encoder and which mask decoder."""
    from sam_hf import SamHFConfig

    SamHFModel(SamHFConfig.from_preset("tiny_vit_t")).save_pretrained(tmp_path / "tiny_vit")
    SamHFModel(SamHFConfig.from_preset("tiny_vit_t_hq")).save_pretrained(tmp_path / "light_hq")
    _lora_adapter(str(tmp_path / "tiny_vit"), tmp_path / "tiny_vit_adapter")
    _lora_adapter(str(model_forms["meta"]), tmp_path / "vit_adapter")
    _lora_adapter(str(tmp_path / "light_hq"), tmp_path / "light_hq_adapter")
    cases = [(path, "vit", "sam", {}) for path in model_forms.values()] + [
        ("sam-hf-tiny", "vit", "sam", {}),
        (tmp_path / "vit_adapter", "vit", "sam", {}),
        (tmp_path / "vit_adapter", "vit", "sam", {"merge_adapter": True}),
        (tmp_path / "tiny_vit", "tiny_vit", "sam", {}),
        (tmp_path / "tiny_vit_adapter", "tiny_vit", "sam", {}),
        (tmp_path / "tiny_vit_adapter", "tiny_vit", "sam", {"merge_adapter": True}),
        (tmp_path / "light_hq", "tiny_vit", "hq", {}),
        (tmp_path / "light_hq_adapter", "tiny_vit", "hq", {"merge_adapter": True}),
    ]
    capsys.readouterr()
    for path, encoder_type, decoder_type, kwargs in cases:
        _, _, resolved = load_model(path, **kwargs)
        assert (resolved.encoder_type, resolved.decoder_type) == (encoder_type, decoder_type), path
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sam_hf:")]
        assert said == [f"sam_hf: loaded {resolved.describe()}"], path
        assert said[0].endswith(f", image encoder {encoder_type}, mask decoder {decoder_type}"), path


def test_shipped_model_is_named_by_its_name_however_given(tmp_path, monkeypatch):
    folder = shipped_model_path("sam-hf-tiny")
    monkeypatch.chdir(tmp_path)
    for given in ("sam-hf-tiny", "sam_hf/sam-hf-tiny", folder, str(folder)):
        assert portable_model_name(given) == "sam-hf-tiny"
        assert locate_model(given).kind == "shipped"
    assert SamHFModel.from_pretrained("sam-hf-tiny").name_or_path == "sam-hf-tiny"
    assert load_pretrained(folder, verbose=False).name_or_path == "sam-hf-tiny"


def test_what_is_no_model_is_refused_naming_the_forms(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        ValueError, match=r"has no config.json or adapter_config.json .*notes.txt.*PEFT adapter"
    ):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="is no local file or folder, and no Hub repo id"):
        locate_model(tmp_path / "missing" / "sam.pth")  # refused at once: no Hub round trip for a path
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image.png")
    argv = ["segment", str(tmp_path / "image.png"), "--model", str(tmp_path), "--point", "1,1", "--out", "o"]
    assert main(argv) == 2
    assert re.search(r"^sam-hf segment: error: --model: .*has no config.json", capsys.readouterr().err, re.M)


def test_adapter_loads_on_its_base_or_merged(model_forms, tmp_path):
    from peft import PeftModel

    trained = _lora_adapter(str(model_forms["meta"]), tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_forms["meta"])
    model, _, resolved = load_model(tmp_path / "adapter", verbose=False)
    assert isinstance(model, PeftModel)
    assert (resolved.kind, resolved.base, resolved.merged) == ("adapter", str(model_forms["meta"]), False)
    merged, _, resolved = load_model(tmp_path / "adapter", merge_adapter=True, verbose=False)
    assert type(merged) is SamHFModel and resolved.merged
    assert merged.name_or_path == str(tmp_path / "adapter")  # a LoRA on top of it records this folder
    expected = _masks(trained)
    torch.testing.assert_close(_masks(model), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_masks(merged), expected, atol=1e-4, rtol=1e-4)
    with model.disable_adapter():
        assert not torch.allclose(_masks(model), expected, atol=1e-3)


def test_adapter_loads_on_its_located_base_without_locating_it_again(model_forms, tmp_path, monkeypatch):
    import dataclasses

    import sam_hf.hub.loading

    _lora_adapter(str(model_forms["meta"]), tmp_path / "adapter")
    adapter = locate_model(tmp_path / "adapter")
    with pytest.raises(ValueError, match="located_base must be what locate_model made of base"):
        dataclasses.replace(adapter, located_base=locate_model("sam-hf-tiny"))
    adapter = dataclasses.replace(adapter, located_base=locate_model(model_forms["meta"]))

    def located_only(name_or_path, **kwargs):
        assert isinstance(name_or_path, sam_hf.hub.ResolvedModel), f"located {name_or_path} again"
        return name_or_path

    monkeypatch.setattr(sam_hf.hub.loading, "locate_model", located_only)
    model, _, resolved = load_model(adapter, verbose=False)
    assert hasattr(model, "peft_config") and resolved.base == str(model_forms["meta"])


def test_adapter_without_base_is_refused_with_the_fix(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": None})
    )
    with pytest.raises(ValueError, match="must name its base model in base_model_name_or_path .*got None"):
        load_model(folder)


def test_adapter_recording_the_shipped_folder_resolves_to_the_shipped_name(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    base = str(shipped_model_path("sam-hf-tiny"))  # what adapters recorded before bases were named portably
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": base})
    )
    assert locate_model(folder).base == "sam-hf-tiny"


# `sam-hf finetune` outputs: from a Meta .pth and from the shipped model, then used by every command


def _dataset(path: Path) -> None:
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 8:30] = 3
    image = np.where(label[..., None] > 0, 210, 20).astype(np.uint8).repeat(3, axis=-1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": [image] * 4, "label": [label] * 4}, features=features).save_to_disk(
        str(path)
    )


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> dict[str, Path]:
    """Two steps of `sam-hf finetune` from a Meta .pth of sam-hf-tiny and from `sam-hf-tiny` by name."""
    root = tmp_path_factory.mktemp("finetuned")
    _dataset(root / "data")
    save_meta_checkpoint(SamHFModel.from_pretrained("sam-hf-tiny").state_dict(), root / "base.pth")
    outputs = {}
    for name, base in (("meta", str(root / "base.pth")), ("shipped", "sam-hf-tiny")):
        outputs[name] = root / name
        code = main(
            ["finetune", "--model", base, "--dataset", str(root / "data"), "--lora-r", "2", "--max-steps", "2",
             "--learning-rate", "0.05", "--output-dir", str(outputs[name])]
        )  # fmt: skip
        assert code == 0
    outputs["root"] = root
    return outputs


def test_finetune_from_a_meta_file_records_the_file_and_says_it_must_travel(finetuned, capsys):
    out, base = finetuned["meta"], str(finetuned["root"] / "base.pth")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    assert json.loads((out / "training_summary.json").read_text())["base_model"] == base
    model, _, resolved = load_model(out, verbose=False)
    assert (resolved.kind, resolved.base) == ("finetune_output", base)
    with model.disable_adapter():
        before = _masks(model)
    assert not torch.allclose(_masks(model), before, atol=1e-4)  # the adapter changes predictions
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None  # a local file is no Hub id
    assert "| Base model | `base.pth (local)` |" in card.text
    assert (
        "**Base model not included.**" in card.text and "loading the adapter needs that base too" in card.text
    )
    capsys.readouterr()
    assert main(["push", str(out), "--repo-id", "user/sam-lora", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "sam-hf push: warning: The base model is a local file or folder (`base.pth (local)`)" in err
    with pytest.warns(UserWarning, match="loading the adapter needs that base too"):
        push_to_hub(out, "user/sam-lora", dry_run=True)


class _RecordingApi:
    def __init__(self):
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def repo_info(self, repo_id, **kwargs):
        return type("Info", (), {"sha": "c" * 40})()

    def create_commit(self, repo_id, operations, **kwargs):
        self.uploaded = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        return type("Commit", (), {"commit_url": "https://hub/commit/c", "pr_url": None})()


def test_finetune_from_the_shipped_model_pushes_a_portable_adapter(finetuned, monkeypatch, capsys, tmp_path):
    out = finetuned["shipped"]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "sam-hf-tiny"
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "sam-hf-tiny" and "Base model not included" not in card.text
    api = _RecordingApi()
    monkeypatch.setattr(sam_hf.hub.push, "HfApi", lambda **kwargs: api)
    capsys.readouterr()
    assert main(["push", str(out), "--repo-id", "user/sam-lora"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "preprocessor_config.json",
    } <= set(api.uploaded)
    machine_paths = [str(finetuned["root"]), str(shipped_model_path("sam-hf-tiny")), os.getcwd()]
    for name, data in api.uploaded.items():
        text = data.decode("utf-8", errors="replace")
        assert not [path for path in machine_paths if path in text], name
    # The pushed adapter, copied to another folder (as a download would), loads on the shipped base.
    copy = tmp_path / "downloaded"
    copy.mkdir()
    for name, data in api.uploaded.items():
        (copy / name).write_bytes(data)
    model, _, resolved = load_model(copy, verbose=False)
    assert resolved.base == "sam-hf-tiny"
    torch.testing.assert_close(_masks(model), _masks(load_pretrained(out, verbose=False)))
    # and through PEFT's and transformers' Auto classes (PEFT imports SamHFModel for a shipped base, once allowed)
    from peft import AutoPeftModel
    from transformers import AutoProcessor

    auto = AutoPeftModel.from_pretrained(copy, import_allowlist=["sam_hf"]).eval()
    torch.testing.assert_close(_masks(auto), _masks(model), rtol=0, atol=1e-4)
    assert AutoProcessor.from_pretrained(copy).to_dict() == load_processor("sam-hf-tiny").to_dict()


def test_finetune_output_and_merged_hold_the_processor_and_source(finetuned):
    from transformers import AutoModel, AutoProcessor

    out = finetuned["shipped"]
    for folder in (out, out / "merged"):
        processor_config = json.loads((folder / "preprocessor_config.json").read_text())
        assert processor_config["auto_map"]["AutoProcessor"] == "processing_sam_hf.SamHFProcessor"
        assert (folder / "processing_sam_hf.py").is_file() and (folder / "images.py").is_file()
        assert AutoProcessor.from_pretrained(folder).image_size == 128
    assert json.loads((out / "merged" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_sam_hf.SamHFModel"
    )
    torch.testing.assert_close(
        _masks(AutoModel.from_pretrained(out / "merged")), _masks(load_pretrained(out, merge_adapter=True))
    )


def test_finetune_output_says_merged_is_the_full_model(finetuned):
    out = finetuned["shipped"]
    assert "`merged/` holds the full model with the adapter merged in" in (out / "README.md").read_text()
    merged, _, resolved = load_model(out, merge_adapter=True, verbose=False)
    assert type(merged) is SamHFModel and resolved.merged
    torch.testing.assert_close(
        _masks(merged), _masks(load_pretrained(out, verbose=False)), atol=1e-4, rtol=1e-4
    )


def test_segment_generate_and_annotate_take_the_finetune_output(finetuned, tmp_path, capsys):
    out = finetuned["meta"]
    image = np.full((64, 80, 3), 30, np.uint8)
    image[10:40, 20:60] = 220
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    picture = str(tmp_path / "images" / "a.png")
    capsys.readouterr()
    assert (
        main(["segment", picture, "--model", str(out), "--point", "40,25", "--out", str(tmp_path / "s")]) == 0
    )
    loaded = f"sam_hf: loaded sam-hf finetune output {out} (LoRA adapter on base "
    assert loaded in capsys.readouterr().err
    assert json.loads((tmp_path / "s" / "scores.json").read_text())["model"] == str(out)
    few = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    assert main(["generate", picture, "--model", str(out), "--out", str(tmp_path / "g"), *few]) == 0
    assert loaded in capsys.readouterr().err
    args = ["annotate", str(tmp_path / "images"), "--model", str(out), "--out", str(tmp_path / "a"), *few]
    assert main([*args, "--no-progress"]) == 0
    assert loaded in capsys.readouterr().err


def _cached_hub_repo(cache_dir: Path, repo_id: str) -> Path:
    """A repo laid out as huggingface_hub caches it (no network here); returns the snapshot folder to fill."""
    revision = "0" * 40
    repo_cache = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(revision)
    return repo_cache / "snapshots" / revision


def test_hub_model_and_hub_adapter_repos_load(tiny_model, tmp_path):
    tiny_model.save_pretrained(_cached_hub_repo(tmp_path, "acme/sam-tiny"))
    hub = {"cache_dir": tmp_path, "local_files_only": True}
    model, _, resolved = load_model("acme/sam-tiny", verbose=False, **hub)
    assert (resolved.kind, resolved.name, resolved.base, resolved.path) == (
        "hub",
        "acme/sam-tiny",
        None,
        None,
    )
    assert model.name_or_path == "acme/sam-tiny" and not resolved.is_local
    torch.testing.assert_close(_masks(model), _masks(tiny_model))
    trained = _lora_adapter("sam-hf-tiny", _cached_hub_repo(tmp_path, "acme/sam-lora"))
    adapter, _, resolved = load_model("acme/sam-lora", verbose=False, **hub)
    assert (resolved.kind, resolved.base) == ("hub", "sam-hf-tiny")
    torch.testing.assert_close(_masks(adapter), _masks(trained))


# Hub names that cannot be loaded fail at once with the cause; the Hub is asked once, or not at all offline


_COMMIT = "0123abcd" * 5


class _Hub:
    """Stands in for `HfApi.model_info`: counts the requests and answers with `error`, else that the repo exists
    at commit `_COMMIT`."""

    def __init__(self, error: Exception | None = None):
        self.error, self.requests = error, 0

    def model_info(self, repo_id, **kwargs):
        from huggingface_hub import ModelInfo

        self.requests += 1
        if self.error is not None:
            raise self.error
        return ModelInfo(id=repo_id, sha=_COMMIT)


def _hub_answering(monkeypatch, error: Exception | None, offline: bool = False) -> _Hub:
    """The Hub, online or in offline mode whatever the caller's environment says. huggingface_hub reads
    HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) once, at import, into `constants.HF_HUB_OFFLINE`."""
    import huggingface_hub
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    hub = _Hub(error)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kwargs: hub.model_info(repo_id)
    )
    return hub


def test_unknown_hub_name_is_no_such_model_after_one_request(monkeypatch, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    try:  # huggingface_hub's HTTP client: httpx2 from huggingface_hub 2, httpx before
        import httpx2 as http
    except ModuleNotFoundError:
        import httpx as http

    response = http.Response(404, request=http.Request("GET", "https://huggingface.co/api/models/sam-hf-tiy"))
    hub = _hub_answering(monkeypatch, RepositoryNotFoundError("404 Repository Not Found", response=response))
    with pytest.raises(ValueError, match=r"no such model: 'sam-hf-tiy' .*; did you mean sam-hf-tiny\?"):
        load_model("sam-hf-tiy", cache_dir=tmp_path, verbose=False)
    assert hub.requests == 1


def test_unreachable_hub_is_named_as_the_cause(monkeypatch, tmp_path, capsys):
    hub = _hub_answering(monkeypatch, ConnectionError("[Errno -2] Name or service not known"))
    with pytest.raises(
        ValueError, match=r"the Hub is unreachable \(ConnectionError: .*\) and 'acme/sam' is not in"
    ):
        load_model("acme/sam", cache_dir=tmp_path, verbose=False)
    assert hub.requests == 1
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image.png")
    argv = [
        "segment",
        str(tmp_path / "image.png"),
        "--model",
        "sam_hf/sam-hf-tiy",
        "--point",
        "1,1",
        "--out",
        "o",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"^sam-hf segment: error: --model: the Hub is unreachable .*did you mean sam-hf-tiny\?$", err, re.M
    )


def test_offline_mode_loads_cached_repos_without_requests_and_refuses_others(
    tiny_model, monkeypatch, tmp_path
):
    hub = _hub_answering(monkeypatch, AssertionError("no request may be made offline"), offline=True)
    with pytest.raises(
        ValueError, match=r"'acme/sam-tiy' is not in the local Hub cache, .*\(HF_HUB_OFFLINE is set\)"
    ):
        load_model("acme/sam-tiy", cache_dir=tmp_path, verbose=False)
    tiny_model.save_pretrained(_cached_hub_repo(tmp_path, "acme/sam-tiny"))
    model, _, resolved = load_model("acme/sam-tiny", cache_dir=tmp_path, verbose=False)
    assert resolved.kind == "hub" and hub.requests == 0
    torch.testing.assert_close(_masks(model), _masks(tiny_model))


def test_every_entry_point_names_offline_as_the_cause_for_a_repo_not_cached(monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    from sam_hf import SamHFProcessor, sam_model_registry

    hub = _hub_answering(monkeypatch, AssertionError("no request may be made offline"), offline=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache (read at import, as HF_HUB_OFFLINE)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    cause = r"'facebook/sam-vit-base' is not in the local Hub cache, and the Hub is not consulted \(HF_HUB_OFFLINE"
    entry_points = (
        (SamHFModel.from_pretrained, ValueError),
        (SamHFProcessor.from_pretrained, FileNotFoundError),  # what load_processor falls back on
        (load_model, ValueError),
        (load_pretrained, ValueError),
        (load_processor, ValueError),
        (lambda name: sam_model_registry["vit_b"](checkpoint=name), ValueError),
    )
    for load, error in entry_points:
        with pytest.raises(error, match=f"^{cause}"):
            load("facebook/sam-vit-base")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image.png")
    argv = ["segment", str(tmp_path / "image.png"), "--model", "facebook/sam-vit-base", "--point", "1,1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert re.search(f"^sam-hf segment: error: --model: {cause}", capsys.readouterr().err, re.M)
    assert hub.requests == 0


def test_unreachable_hub_falls_back_to_the_cache(tiny_model, monkeypatch, tmp_path):
    hub = _hub_answering(monkeypatch, ConnectionError("[Errno -2] Name or service not known"))
    tiny_model.save_pretrained(_cached_hub_repo(tmp_path, "acme/sam-tiny"))
    model, _, _ = load_model("acme/sam-tiny", cache_dir=tmp_path, verbose=False)
    assert hub.requests == 1
    torch.testing.assert_close(_masks(model), _masks(tiny_model))


def _http_404(url: str) -> Exception:
    """The Hub's answer for a file its repo lacks, with the commit header huggingface_hub records it under."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:  # huggingface_hub's HTTP client: httpx2 from huggingface_hub 2, httpx before
        import httpx2 as http
    except ModuleNotFoundError:
        import httpx as http

    response = http.Response(404, headers={"X-Repo-Commit": _COMMIT}, request=http.Request("HEAD", url))
    return RemoteEntryNotFoundError("404 Entry Not Found", response=response)


def test_one_command_resolves_a_hub_name_once_with_one_request(tiny_model, monkeypatch, tmp_path, capsys):
    """`sam-hf segment --model <hub id>`: the resolver asks the Hub once, and every file of the load comes from
    the commit it named, so transformers does not ask again; the name is resolved, looked up among the shipped
    models and its format read once, and the model and processor loaders take what was resolved."""
    import huggingface_hub
    from huggingface_hub import constants, file_download

    import sam_hf.hub.loading
    import sam_hf.modeling.modeling_sam_hf
    import sam_hf.pretrained
    from sam_hf import SamHFProcessor

    hub = _hub_answering(monkeypatch, None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _cached_hub_repo(tmp_path / "hub", "acme/sam-tiny").parent / _COMMIT
    tiny_model.save_pretrained(snapshot)
    SamHFProcessor.from_model_config(tiny_model.config).save_pretrained(snapshot)
    files_asked = []

    def file_metadata(url, **kwargs):  # the repo holds what its cached snapshot holds
        files_asked.append(url.partition("/resolve/")[2])  # revision/filename
        name = files_asked[-1].partition("/")[2]
        if not (snapshot / name).is_file():
            raise _http_404(url)
        size = (snapshot / name).stat().st_size
        return file_download.HfFileMetadata(_COMMIT, f"etag-{name}", url, size, None)

    monkeypatch.setattr(file_download, "get_hf_file_metadata", file_metadata)
    calls = {"resolve": 0, "shipped": 0, "format": 0}

    def counted(function, key, owners, only=lambda *args: True):
        def count(*args, **kwargs):
            calls[key] += only(*args)
            return function(*args, **kwargs)

        for owner in owners:
            monkeypatch.setattr(owner, function.__name__, count)

    loading, modeling = sam_hf.hub.loading, sam_hf.modeling.modeling_sam_hf
    not_resolved = lambda name, *args: not isinstance(name, loading.ResolvedModel)  # noqa: E731
    counted(loading.locate_model, "resolve", (loading, sam_hf.hub), not_resolved)
    counted(sam_hf.pretrained.shipped_model_path, "shipped", (sam_hf.pretrained, loading))
    counted(loading.resolve_checkpoint, "format", (loading, modeling))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image.png")
    argv = ["segment", str(tmp_path / "image.png"), "--model", "acme/sam-tiny", "--point", "1,1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert (
        "sam_hf: loaded Hub repo acme/sam-tiny, image encoder vit, mask decoder sam"
        in capsys.readouterr().err
    )
    assert hub.requests == 1 and calls == {"resolve": 1, "shipped": 1, "format": 1}
    # Only what the cache cannot answer is asked for, by commit: whether the repo holds an adapter.
    assert files_asked == [f"{_COMMIT}/adapter_config.json"]
    assert huggingface_hub.try_to_load_from_cache("acme/sam-tiny", "config.json") == str(
        snapshot / "config.json"
    )

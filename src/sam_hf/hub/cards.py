"""Model cards and Hub uploads for fine-tuned SamHF models.

A card is built only from files the run wrote into its output folder, so it never shows a number that was
not measured (missing ones read "not measured"):
    - `eval_results.json` (`sam_hf.evaluation.EVAL_RESULTS_NAME`, written by `sam-hf evaluate`);
    - `training_summary.json` (`TRAINING_SUMMARY_NAME`, written by `sam-hf finetune`), optional keys read here:
      `base_model`, `dataset`, `dataset_split`, `train_runtime_s`, `trainable_parameters`,
      `total_parameters`, `hyperparameters` (a flat dict);
    - `adapter_config.json` / `adapter_model.safetensors` (PEFT adapter) or `config.json` (full model).

`push_to_hub` stages the folder's top-level weights, configs and results in a temporary folder, adds the card
(unless the folder holds a README the user wrote, which is uploaded unchanged), and sends everything in one
`create_commit` whose `parent_commit` is the branch head read just before, so a branch that moved in the
meantime makes the push fail instead of interleaving commits. The token comes from huggingface_hub's usual
places (`HF_TOKEN`, saved login) and is never printed or written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token

from ..evaluation import EVAL_RESULTS_NAME, NOT_MEASURED, flat_metrics, metric_label, results_table
from ..processing_sam_hf import PROCESSOR_CONFIG_NAME, SamHFProcessor

__all__ = [
    "CARD_MARKER",
    "TRAINING_SUMMARY_NAME",
    "HubPushError",
    "PushResult",
    "adapter_base_model",
    "build_commit_operations",
    "build_model_card",
    "card_template_path",
    "load_pretrained",
    "load_processor",
    "push_to_hub",
]

CARD_MARKER = "<!-- sam_hf: generated model card; edit freely after removing this line -->"
TRAINING_SUMMARY_NAME = "training_summary.json"
_NOT_RECORDED = "not recorded"  # a name (base model, dataset) the run's files do not give
# Top-level files worth publishing: weights, configs, results and the card. Pickles (training_args.bin,
# optimizer states) and checkpoint folders stay local.
_UPLOAD_SUFFIXES = (".safetensors", ".json", ".md", ".txt")
_RUN_LABELS = {"base": "base model", "finetuned": "fine-tuned", "model": "this model"}


class HubPushError(RuntimeError):
    """An upload failed; the local folder is unchanged and the message says how to retry."""


@dataclass
class PushResult:
    """What `push_to_hub` uploaded (or, with `dry_run`, would upload).

    Args:
        repo_id: target repository.
        files: `(path_in_repo, size_in_bytes)` of every file in the commit.
        revision: target branch (`None` = the default branch).
        commit_url: URL of the commit (`None` on a dry run).
        pr_url: URL of the pull request when `create_pr` was set.
    """

    repo_id: str
    files: list[tuple[str, int]] = field(default_factory=list)
    revision: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None


def card_template_path(name: str = "sam_hf_finetuned") -> Path:
    """Path of a model card template shipped in the package (`sam_hf/model_cards/<name>.md`)."""
    path = Path(str(resources.files("sam_hf") / "model_cards" / f"{name}.md"))
    if not path.is_file():
        raise ValueError(f"name must be a model card template shipped with sam_hf, got {name!r}")
    return path


def build_model_card(folder: str | Path, repo_id: str | None = None, merged: bool = False) -> ModelCard:
    """Fill the fine-tuned model card from the run's files in `folder` (see module docstring).

    Args:
        folder: output folder of `sam-hf finetune` (adapter or full model, plus results).
        repo_id: Hub repository the card is written for; used in the loading snippet and as model name.
        merged: the repository holds the adapter merged into the base model rather than the adapter.

    Returns:
        The card; `model-index` metadata holds the evaluation results of the fine-tuned model, if measured.
    """
    folder = Path(folder)
    summary = _read_json(folder / TRAINING_SUMMARY_NAME)
    eval_results = _read_json(folder / EVAL_RESULTS_NAME)
    adapter = _read_json(folder / "adapter_config.json")
    name = repo_id or folder.resolve().name
    base_model = summary.get("base_model") or adapter.get("base_model_name_or_path")
    dataset = summary.get("dataset")  # the training data; evaluation data is named in the results table
    eval_header, eval_rows = results_table(eval_results.get("runs", {}))
    card_data = ModelCardData(
        model_name=name,
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        library_name="sam_hf",
        pipeline_tag="mask-generation",
        tags=["segment-anything", "sam_hf", "image-segmentation"] + (["lora", "peft"] if adapter else []),
        eval_results=_eval_results_metadata(eval_results) or None,
    )
    protocol = eval_results.get("protocol", {})
    return ModelCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        marker=CARD_MARKER,
        model_name=name,
        repo_id=repo_id or f"path/to/{folder.resolve().name}",
        base_model_text=_model_text(base_model),
        base_model_load=base_model if _is_hub_id(base_model) else "path/to/base_model",
        dataset_text=_dataset_text(dataset, summary.get("dataset_split")),
        weights_text=_weights_text(bool(adapter), merged),
        ships_adapter=bool(adapter) and not merged,
        trainable_parameters_text=_trainable_parameters_text(folder, summary),
        training_time_text=_duration_text(summary.get("train_runtime_s")),
        lora=_lora_rows(adapter),
        hyperparameters=sorted((str(k), str(v)) for k, v in summary.get("hyperparameters", {}).items()),
        protocol_name=protocol.get("name", NOT_MEASURED),
        protocol_text=protocol.get("description", ""),
        max_clicks_text=protocol.get("max_clicks", NOT_MEASURED),
        eval_dataset_text=_dataset_text(eval_results.get("dataset"), eval_results.get("split")),
        eval_images_text=_images_text(eval_results),
        eval_columns=[_RUN_LABELS.get(name, name) for name in eval_header[2:]],
        eval_rows=eval_rows,
    )


def build_commit_operations(
    folder: str | Path, staging_dir: str | Path, repo_id: str | None = None, merge_adapter: bool = False
) -> list[CommitOperationAdd]:
    """Copy what should be published from `folder` into `staging_dir`, add the card, list the operations.

    Args:
        folder: output folder to publish (left untouched).
        staging_dir: empty temporary folder; the operations read their files from it, so keep it until the
            commit is done.
        repo_id: target repository, for the card.
        merge_adapter: publish the adapter merged into its base model (`config.json` + `model.safetensors`)
            instead of the adapter files.

    Returns:
        One `CommitOperationAdd` per staged file, sorted by path in the repository.
    """
    folder, staging_dir = Path(folder), Path(staging_dir)
    is_adapter = (folder / "adapter_config.json").is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        raise ValueError(
            f"folder must hold a PEFT adapter (adapter_config.json) or a model (config.json), got {folder}"
        )
    if merge_adapter and not is_adapter:
        raise ValueError(f"merge_adapter needs an adapter folder (adapter_config.json), got {folder}")
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _UPLOAD_SUFFIXES:
            if not (merge_adapter and path.name.startswith("adapter_")):
                shutil.copy2(path, staging_dir / path.name)
    if merge_adapter:
        load_pretrained(folder).merge_and_unload().save_pretrained(staging_dir)
    if not (staging_dir / PROCESSOR_CONFIG_NAME).is_file():  # the repo must load with SamHFProcessor alone
        load_processor(folder).save_pretrained(staging_dir)
    readme = staging_dir / "README.md"
    if not readme.is_file() or _is_generated_card(readme.read_text(encoding="utf-8")):
        # Ours or a blank auto-card: regenerate from this run's files. Anything else the user wrote: keep it.
        build_model_card(folder, repo_id, merged=merge_adapter).save(readme)
    return [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        for path in sorted(staging_dir.iterdir())
    ]


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    branch: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload fine-tuned SAM (sam_hf)",
    merge_adapter: bool = False,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> PushResult:
    """Upload an adapter or model folder with its processor config, results and card in one commit.

    Args:
        folder: output folder of a run (`sam-hf finetune`), left untouched whatever happens.
        repo_id: target repository (`name` or `namespace/name`); created if missing.
        private: visibility when the repository is created (`None`: the account's default).
        branch: target branch, created from the default branch if missing (`None`: the default branch).
        create_pr: open a pull request against `branch` instead of committing to it.
        commit_message: message of the commit.
        merge_adapter: upload the adapter merged into its base model instead of the adapter.
        dry_run: only stage and report what would be uploaded; no network, no token needed.
        api: Hub client (default: `HfApi()` with the token from `HF_TOKEN` or the saved login).

    Returns:
        A `PushResult` listing the files and, unless `dry_run`, the commit (and PR) URL.

    Raises:
        HubPushError: the upload failed; the message names the cause and how to retry.
    """
    with tempfile.TemporaryDirectory(prefix="sam_hf_push_") as staging:
        operations = build_commit_operations(folder, staging, repo_id, merge_adapter=merge_adapter)
        files = [(op.path_in_repo, Path(op.path_or_fileobj).stat().st_size) for op in operations]
        result = PushResult(repo_id=repo_id, files=files, revision=branch)
        if dry_run:
            return result
        api = api or HfApi()
        _refuse_files_with_token(operations, getattr(api, "token", None) or get_token())
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
            if branch is not None:
                api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
            head = api.repo_info(repo_id, revision=branch, repo_type="model").sha
            commit = api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message,
                revision=branch,
                create_pr=create_pr,
                parent_commit=head,
                repo_type="model",
            )
        except Exception as error:
            flags = (
                [f"--branch {branch}"] * bool(branch)
                + ["--create-pr"] * create_pr
                + ["--merge"] * merge_adapter
            )
            raise HubPushError(
                f"pushing {folder} to {repo_id} failed ({type(error).__name__}: {error}). Nothing local was "
                f"changed. If the branch moved during the push, the commit was refused on purpose. "
                f"Retry with: sam-hf push {folder} --repo-id {repo_id} {' '.join(flags)}".rstrip()
            ) from error
    result.repo_id = repo_id
    result.commit_url = commit.commit_url
    result.pr_url = commit.pr_url
    return result


def load_pretrained(name_or_path: str | Path) -> torch.nn.Module:
    """Load a `SamHFModel`, or a PEFT adapter folder on top of its base model (a `PeftModel`).

    Args:
        name_or_path: a `save_pretrained` folder of a `SamHFModel` or of a `PeftModel` (`adapter_config.json`,
            whose `base_model_name_or_path` names the base model), or anything else `SamHFModel.from_pretrained`
            takes: a shipped model name (`sam-hf-tiny`), a Hub id, a Meta `.pth` file.
    """
    from .. import SamHFModel
    from ..modeling.modeling_sam_hf import shipped_model_folder

    path = Path(shipped_model_folder(str(name_or_path)))
    base = adapter_base_model(path)
    if base is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(SamHFModel.from_pretrained(base), str(path))
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"folder must be a SamHF folder (config.json) or an adapter folder, got {path}")
    return SamHFModel.from_pretrained(str(path))


def load_processor(name_or_path: str | Path, config: Any = None) -> SamHFProcessor:
    """The processor of a model or adapter: the folder's `preprocessor_config.json`, else its base model's,
    else the one matching the model config (`config`, when given, else the folder's or the base's)."""
    from .. import SamHFConfig
    from ..modeling.modeling_sam_hf import shipped_model_folder

    folder = Path(shipped_model_folder(str(name_or_path)))
    base = adapter_base_model(folder)
    for candidate in (folder, Path(base) if base else None):
        if candidate is not None and (candidate / PROCESSOR_CONFIG_NAME).is_file():
            return SamHFProcessor.from_pretrained(candidate)
    return SamHFProcessor.from_model_config(config or SamHFConfig.from_pretrained(base or str(folder)))


def adapter_base_model(folder: str | Path) -> str | None:
    """`base_model_name_or_path` of a PEFT adapter folder; `None` when `folder` holds no adapter."""
    adapter_config = Path(folder) / "adapter_config.json"
    if not adapter_config.is_file():
        return None
    return json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]


def _refuse_files_with_token(operations: list[CommitOperationAdd], token: str | None) -> None:
    """Never publish a file that contains the user's token (e.g. a config that captured it)."""
    if not token:
        return
    for op in operations:
        if token.encode() in Path(op.path_or_fileobj).read_bytes():
            raise HubPushError(
                f"refusing to upload {op.path_in_repo}: it contains your Hub token; remove it and retry"
            )


def _is_generated_card(text: str) -> bool:
    """Our card (marker), or the blank default card `PeftModel.save_pretrained` writes, unedited."""
    if CARD_MARKER in text:
        return True
    # PEFT fills huggingface_hub's default template and appends a "### Framework versions" block.
    body = [
        line for line in ModelCard(text).text.splitlines() if not line.startswith(("### Framework", "- PEFT"))
    ]
    blank = ModelCard.from_template(ModelCardData()).text.splitlines()
    return [line for line in body if line.strip()] == [line for line in blank if line.strip()]


def _weights_text(has_adapter: bool, merged: bool) -> str:
    if has_adapter and merged:
        return "full model (the LoRA adapter merged into the base model)"
    return "LoRA adapter (PEFT)" if has_adapter else "full model"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _is_hub_id(name: str | None) -> bool:
    """`namespace/name` or `name` that is not a local path: only such ids belong in card metadata."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    return name.count("/") <= 1


def _model_text(name: str | None) -> str:
    return f"`{_public_name(name)}`" if name else _NOT_RECORDED


def _dataset_text(dataset: str | None, split: str | None) -> str:
    if not dataset:
        return _NOT_RECORDED
    return f"`{_public_name(dataset)}`" + (f", split `{split}`" if split else "")


def _public_name(name: str) -> str:
    """A Hub id as is; a local path by its last component only (a card should not publish local paths)."""
    return name if _is_hub_id(name) else f"{Path(name).name} (local)"


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return NOT_MEASURED
    return f"{seconds:.1f} s ({seconds / 60:.1f} min)"


def _trainable_parameters_text(folder: Path, summary: dict[str, Any]) -> str:
    trainable, total = summary.get("trainable_parameters"), summary.get("total_parameters")
    if trainable is not None:
        return f"{trainable:,}" + (f" of {total:,} ({100 * trainable / total:.2f}%)" if total else "")
    adapter_weights = folder / "adapter_model.safetensors"
    if not adapter_weights.is_file():
        return NOT_MEASURED
    from safetensors import safe_open

    count = 0
    with safe_open(str(adapter_weights), framework="numpy") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            numel = 1
            for dim in weights.get_slice(key).get_shape():
                numel *= dim
            count += numel
    return f"{count:,} (counted in adapter_model.safetensors)"


def _lora_rows(adapter: dict[str, Any]) -> list[tuple[str, str]]:
    keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "bias")
    return [(key, _plain(adapter[key])) for key in keys if adapter.get(key) is not None]


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):
        return ", ".join(f"`{v}`" for v in sorted(value))
    return str(value)


def _images_text(eval_results: dict[str, Any]) -> str:
    if "num_images" not in eval_results:
        return ""
    return f"{eval_results['num_images']} images"


def _eval_results_metadata(eval_results: dict[str, Any]) -> list[EvalResult]:
    """`model-index` entries for the published model: the fine-tuned run, or the only run."""
    runs = eval_results.get("runs", {})
    run = runs.get("finetuned") or runs.get("model")
    dataset = eval_results.get("dataset")
    if not run or not dataset:
        return []
    dataset = _public_name(dataset)
    entries = []
    for prompt, result in sorted(run.get("results", {}).items()):
        for key, value in flat_metrics(result).items():
            entries.append(
                EvalResult(
                    task_type="image-segmentation",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=eval_results.get("split"),
                    metric_type=key,
                    metric_name=f"{metric_label(key)} ({prompt})",
                    metric_config=prompt,
                    metric_value=round(float(value), 6),
                    metric_args={"protocol": eval_results.get("protocol", {}).get("name")},
                )
            )
    return entries

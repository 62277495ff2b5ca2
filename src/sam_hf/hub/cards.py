"""Model cards for fine-tuned SamHF models.

A card is built only from files the run wrote into its output folder, so it never shows a number that was
not measured (missing ones read "not measured"):
    - `eval_results.json` (`sam_hf.evaluation.EVAL_RESULTS_NAME`, written by `sam-hf evaluate`);
    - `training_summary.json` (`TRAINING_SUMMARY_NAME`, written by `sam-hf finetune`), optional keys read here:
      `base_model`, `dataset`, `dataset_split`, `train_runtime_s`, `trainable_parameters`,
      `total_parameters`, `hyperparameters` (a flat dict), `image_encoder` and `mask_decoder` (the config's
      `encoder_type` and `decoder_type`);
    - `adapter_config.json` / `adapter_model.safetensors` (PEFT adapter) or `config.json` (full model), whose
      `encoder_type` and `decoder_type` name the SAM variant when the summary does not.

The card names the variant by those registered names and states the licence: Apache-2.0, sam_hf's and that of
the official SAM, SAM-HQ and MobileSAM weights, with the caveat that a base trained by others carries its own.

The base model is named as the adapter records it (`sam_hf.hub.loading`): a shipped name or Hub id goes into
the `base_model` metadata and the loading snippet; a local path never does: the card names it by its last
component and says that the base must travel with the adapter.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..evaluation import EVAL_RESULTS_NAME, NOT_MEASURED, flat_metrics, metric_label, results_table
from ..modeling.configuration_sam_hf import SamHFConfig
from ..pretrained import shipped_model_name
from .loading import ADAPTER_CONFIG_NAME, MERGED_FOLDER, adapter_base_model, portable_model_name

__all__ = [
    "CARD_MARKER",
    "LICENSE",
    "TRAINING_SUMMARY_NAME",
    "build_model_card",
    "card_template_path",
    "is_generated_card",
    "local_base_note",
    "public_name",
]

CARD_MARKER = "<!-- sam_hf: generated model card; edit freely after removing this line -->"
TRAINING_SUMMARY_NAME = "training_summary.json"
_NOT_RECORDED = "not recorded"  # a name (base model, dataset) the run's files do not give
_RUN_LABELS = {"base": "base model", "finetuned": "fine-tuned", "model": "this model"}
LICENSE = "apache-2.0"  # sam_hf's, and the official SAM, SAM-HQ and MobileSAM weights'


def card_template_path(name: str = "sam_hf_finetuned") -> Path:
    """Path of a model card template shipped in the package (`sam_hf/model_cards/<name>.md`)."""
    path = Path(str(resources.files("sam_hf") / "model_cards" / f"{name}.md"))
    if not path.is_file():
        raise ValueError(f"name must be a model card template shipped with sam_hf, got {name!r}")
    return path


def build_model_card(
    folder: str | Path, repo_id: str | None = None, merged: bool = False, in_output_folder: bool = False
) -> ModelCard:
    """Fill the fine-tuned model card from the run's files in `folder` (see module docstring).

    Args:
        folder: output folder of `sam-hf finetune` (adapter or full model, plus results).
        repo_id: Hub repository the card is written for; used in the loading snippet and as model name.
        merged: the repository holds the adapter merged into the base model rather than the adapter.
        in_output_folder: the card is the README of the training output folder itself, which (unlike a pushed
            repository) also holds `merged/`, the full model with the adapter merged in; the card says so.

    Returns:
        The card; `model-index` metadata holds the evaluation results of the fine-tuned model, if measured.
    """
    folder = Path(folder)
    summary = _read_json(folder / TRAINING_SUMMARY_NAME)
    eval_results = _read_json(folder / EVAL_RESULTS_NAME)
    adapter = _read_json(folder / ADAPTER_CONFIG_NAME)
    name = repo_id or folder.resolve().name
    # The adapter's own record is what loading uses; the summary names the base of a full fine-tune.
    base_model = adapter_base_model(folder) if adapter else summary.get("base_model")
    base_model = portable_model_name(base_model) if base_model else None
    dataset = summary.get("dataset")  # the training data; evaluation data is named in the results table
    eval_header, eval_rows = results_table(eval_results.get("runs", {}))
    card_data = ModelCardData(
        model_name=name,
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        library_name="sam_hf",
        license=LICENSE,
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
        architecture_text=_architecture_text(folder, summary),
        base_model_load=base_model if _is_hub_id(base_model) else "path/to/base_model",
        local_base_note=local_base_note(base_model) if adapter and not merged else "",
        merged_folder=MERGED_FOLDER if in_output_folder and (folder / MERGED_FOLDER).is_dir() else "",
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


def is_generated_card(text: str) -> bool:
    """Our card (marker), or the blank default card `PeftModel.save_pretrained` writes, unedited."""
    if CARD_MARKER in text:
        return True
    # PEFT fills huggingface_hub's default template and appends a "### Framework versions" block.
    body = [
        line for line in ModelCard(text).text.splitlines() if not line.startswith(("### Framework", "- PEFT"))
    ]
    blank = ModelCard.from_template(ModelCardData()).text.splitlines()
    return [line for line in body if line.strip()] == [line for line in blank if line.strip()]


def _architecture_text(folder: Path, summary: dict[str, Any]) -> str:
    """The SAM variant by its registered names: the training summary's record, else the model's config (this
    folder's, or `merged/`'s for an adapter)."""
    encoder, decoder = summary.get("image_encoder"), summary.get("mask_decoder")
    config = _read_json(folder / "config.json") or _read_json(folder / MERGED_FOLDER / "config.json")
    if encoder is None and config.get("model_type") == "sam_hf":
        model_config = SamHFConfig.from_dict(config)  # its defaults fill what an older file lacks
        encoder = model_config.vision_config.encoder_type
        decoder = model_config.mask_decoder_config.decoder_type
    if encoder is None:
        return _NOT_RECORDED
    return f"image encoder `{encoder}`, mask decoder `{decoder}`"


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


def local_base_note(base_model: str | None) -> str:
    """What a reader must know when an adapter's base is a local file or folder ("" for a shipped or Hub base)."""
    if not base_model or _is_hub_id(base_model):
        return ""
    return (
        f"The base model is a local file or folder (`{public_name(base_model)}`) that is not published with "
        "this adapter: loading the adapter needs that base too. Copy it along and put its path in "
        "`adapter_config.json` (`base_model_name_or_path`), or publish the base on the Hub and put its id there."
    )


def _model_text(name: str | None) -> str:
    if not name:
        return _NOT_RECORDED
    shipped = shipped_model_name(name)
    return f"`{name}` (shipped with sam_hf)" if shipped == name else f"`{public_name(name)}`"


def _dataset_text(dataset: str | None, split: str | None) -> str:
    if not dataset:
        return _NOT_RECORDED
    return f"`{public_name(dataset)}`" + (f", split `{split}`" if split else "")


def public_name(name: str) -> str:
    """A Hub id or shipped name as is; a local path by its last component only: nothing published (card, run
    records) shows the layout of the machine that trained."""
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
    dataset = public_name(dataset)
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

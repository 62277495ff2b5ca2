"""The whole fine-tuning job: train, then record, measure, describe and optionally publish the result.

`run_finetune` is what `sam-hf finetune` and `accelerate launch training/finetune.py` call, so both write the
same output folder:
    - the adapter (or full decoder) and processor config, `merged/` (the loadable full model), the training
      log `train_log.jsonl` and `finetune_config.json` (from `sam_hf.training.loop.finetune`);
    - `training_summary.json` (`sam_hf.hub.TRAINING_SUMMARY_NAME`): what the model card reports about the run;
    - `eval_results.json` (`sam_hf.evaluation.EVAL_RESULTS_NAME`): the base and the fine-tuned model measured
      on `config.eval_split`, when there is one;
    - `README.md`: the model card, built from those files;
and uploads the folder when `config.push_to_hub` names a repository. Under several processes, training runs
in all of them and everything after it in the main process only.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .loop import FinetuneConfig, finetune

if TYPE_CHECKING:
    import torch

    from ..hub import ResolvedModel
    from ..processing_sam_hf import SamHFProcessor

__all__ = ["default_eval_split", "run_finetune"]


def run_finetune(
    config: FinetuneConfig,
    resume_from_checkpoint: str | None = None,
    max_steps_this_run: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    *,
    resolved: ResolvedModel | None = None,
) -> dict[str, Any]:
    """Train as `config` says, then write the summary, the before/after evaluation and the card; push if asked.

    `config.model` is resolved once for the whole job (a Hub id costs one request): training, the trained
    adapter's base and the base side of the evaluation all load what `sam_hf.hub.locate_model` made of it.

    Args:
        config: the run, including its evaluation and push settings.
        resume_from_checkpoint: a `step-<n>` folder, or `"latest"` for the newest one in `config.output_dir`.
        max_steps_this_run: stop after this many optimizer steps in total (the run can be resumed later).
        on_step: called after each optimizer step with `(step, total_steps)` (see `finetune`).
        resolved: what `sam_hf.hub.locate_model` made of `config.model` (as `sam-hf finetune` has it); None:
            `config.model` is located here.

    Returns:
        `finetune`'s summary plus `runtime_s`; in the main process of a completed run also `eval_results`
        (path or None), `card` (path) and `push` (the `PushResult`, or None).

    Raises:
        sam_hf.hub.HubPushError: the upload failed; the output folder is complete and the message says how to
            retry.
    """
    from accelerate import PartialState

    from ..hub import build_model_card, load_model, locate_model, push_to_hub

    resolved = locate_model(config.model if resolved is None else resolved)
    start = time.perf_counter()
    summary = finetune(config, resume_from_checkpoint, max_steps_this_run, on_step, resolved=resolved)
    summary["runtime_s"] = round(time.perf_counter() - start, 1)
    if not PartialState().is_main_process:
        return summary
    output_dir = summary.get("output_dir")
    if output_dir is None:
        print(f"trained {summary['steps']} steps; no final model yet in {config.output_dir}")
        return summary
    saved = f"saved to {output_dir}"
    if "merged_dir" in summary:
        merged = summary["merged_dir"]
        saved = f"saved the adapter to {output_dir} and the full model (base + adapter) to {merged}"
    print(f"trained {summary['steps']} steps in {summary['runtime_s']:.1f} s; {saved}")
    trained = locate_model(output_dir)
    if trained.base is not None:  # an adapter on the model just trained, located above
        trained = replace(trained, located_base=resolved)
    model, processor, _ = load_model(trained)
    _write_training_summary(config, summary, model)
    eval_split = default_eval_split(config.dataset) if config.eval_split == "auto" else config.eval_split
    summary["eval_results"] = None
    if eval_split is not None:
        summary["eval_results"] = _evaluate_before_after(config, eval_split, resolved, model, processor)
    else:
        reason = (
            "eval_split is none"
            if config.eval_split is None
            else f"{config.dataset} has no 'test' or 'validation' split (name one with eval_split, --eval-split)"
        )
        print(f"no evaluation: {reason}; the model card states that nothing was measured")
    card = build_model_card(output_dir, config.push_to_hub, in_output_folder=True)
    summary["card"] = os.path.join(output_dir, "README.md")
    card.save(summary["card"])
    print(f"wrote {summary['card']}")
    summary["push"] = None
    if config.push_to_hub:
        result = summary["push"] = push_to_hub(output_dir, config.push_to_hub)
        print(f"pushed {len(result.files)} files to {result.repo_id}: {result.commit_url}")
    return summary


def default_eval_split(dataset: str) -> str | None:
    """'test' or 'validation' when `dataset` is a saved `DatasetDict` with one; Hub datasets are not probed."""
    from ..data.sources import source_kind

    path = os.path.join(dataset, "dataset_dict.json")
    if source_kind(dataset) != "dataset" or not os.path.isfile(path):
        return None
    with open(path) as f:
        splits = json.load(f)["splits"]
    return next((split for split in ("test", "validation") if split in splits), None)


def _write_training_summary(config: FinetuneConfig, summary: dict[str, Any], model: torch.nn.Module) -> None:
    """`training_summary.json`: what the model card reports about the run (see `sam_hf.hub`), of `model`, the
    trained model as loaded from `summary["output_dir"]`."""
    from ..hub import TRAINING_SUMMARY_NAME, portable_model_name

    trainable = (  # with LoRA: the adapters and the modules trained in full beside them (`modules_to_save`)
        sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or ".modules_to_save." in n)
        if config.lora_r > 0
        else sum(p.numel() for p in model.mask_decoder.parameters())
    )
    record = {
        "base_model": portable_model_name(config.model),
        "image_encoder": model.config.vision_config.encoder_type,
        "mask_decoder": model.config.mask_decoder_config.decoder_type,
        "dataset": config.dataset,
        "dataset_split": config.split,
        "train_runtime_s": summary["runtime_s"],
        "steps": summary["steps"],
        "num_processes": summary["num_processes"],
        "final_loss": summary["losses"][-1] if summary["losses"] else None,
        "trainable_parameters": trainable,
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "hyperparameters": config.hyperparameters(),
    }
    with open(os.path.join(summary["output_dir"], TRAINING_SUMMARY_NAME), "w") as f:
        json.dump(record, f, indent=2)


def _evaluate_before_after(
    config: FinetuneConfig,
    split: str,
    base: ResolvedModel,
    model: torch.nn.Module,
    processor: SamHFProcessor,
) -> str:
    """Measure the base model (`base`, located) and the fine-tuned one (`model` and its `processor`, loaded from
    `config.output_dir`) on `split`; write and return `eval_results.json`."""
    from ..data.reader import load_segmentation_dataset, to_instances
    from ..evaluation import EVAL_RESULTS_NAME, EvaluationProtocol, timed_run, write_eval_results
    from ..hub import load_pretrained

    dataset, stats = load_segmentation_dataset(
        config.dataset, split, config.image_column, config.mask_column, config.mask_format, config.image_root
    )
    if config.eval_max_images is not None:
        dataset = dataset.select(range(min(config.eval_max_images, len(dataset))))
    protocol = EvaluationProtocol(prompts=tuple(config.eval_prompts), seed=config.seed)

    def samples():
        for row in dataset:
            yield to_instances(row, config.image_column, config.mask_column, stats.mask_format)

    runs = {}
    for name in ("base", "finetuned"):
        adapter_off = (
            model.disable_adapter() if name == "base" and config.lora_r > 0 else contextlib.nullcontext()
        )
        with adapter_off:
            candidate = model if name == "finetuned" or config.lora_r > 0 else load_pretrained(base)
            source = config.model if name == "base" else config.output_dir
            runs[name] = timed_run(source, candidate, processor, samples(), protocol, len(dataset))
    path = os.path.join(config.output_dir, EVAL_RESULTS_NAME)
    print(write_eval_results(path, protocol, config.dataset, split, len(dataset), runs))
    print(f"wrote {path}")
    return path

"""The fine-tuning job: an accelerate training loop with atomic checkpoints and exact resume.

Used by `training/finetune.py` (under `accelerate launch`) and by `sam-hf finetune`. Runs on CPU, one GPU
or DDP over several processes/nodes, with mixed precision and gradient accumulation.

Checkpoints are written to `<output_dir>/checkpoints/tmp-step-<n>` and renamed to `step-<n>` once
complete, so a resume never reads a half-written one. A checkpoint holds the model (adapter), optimizer,
scheduler and every RNG state; together with the seeded sampler (order = seed + epoch) and the collator's
seeding (seed, epoch, example index), a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .collator import PROMPT_TYPES, SamTrainingCollator, add_correction_click, add_example_index
from .lora import LORA_TARGET_MODULES, apply_lora, freeze_for_decoder_training

__all__ = ["FinetuneConfig", "finetune", "latest_checkpoint"]

_CHECKPOINT = re.compile(r"^step-(\d+)$")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs (the YAML config and the CLI map onto these fields).

    `lora_r=0` means full decoder fine-tuning instead of LoRA. `correction_clicks=N` adds N decoder passes per
    step as in SAM's interactive training (a click in the previous prediction's error, its logits fed back,
    one output mask); the loss averages all passes. `checkpoint_every=0` disables intermediate
    checkpoints; `max_steps` (optimizer steps) overrides `epochs` when set.
    """

    model: str
    dataset: str
    output_dir: str = "out"
    split: str | None = None
    image_column: str = "image"
    mask_column: str = "label"
    mask_format: str = "auto"
    prompt_types: list[str] = field(default_factory=lambda: list(PROMPT_TYPES))
    max_prompts: int = 8
    num_points: int = 1
    correction_clicks: int = 0
    lora_r: int = 8
    lora_alpha: int | None = None
    lora_dropout: float = 0.0
    target_modules: str | list[str] = LORA_TARGET_MODULES
    modules_to_save: list[str] | None = None
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    checkpoint_every: int = 0
    cache_embeddings: bool = True
    cache_dir: str | None = None
    merge: bool = True
    cpu: bool = False


def latest_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint with the highest step in `<output_dir>/checkpoints`, or None."""
    folder = os.path.join(output_dir, "checkpoints")
    steps = (
        [int(m.group(1)) for name in os.listdir(folder) if (m := _CHECKPOINT.match(name))]
        if os.path.isdir(folder)
        else []
    )
    return os.path.join(folder, f"step-{max(steps)}") if steps else None


def _save_checkpoint(accelerator, output_dir: str, step: int) -> None:
    folder = os.path.join(output_dir, "checkpoints")
    temporary, final = os.path.join(folder, f"tmp-step-{step}"), os.path.join(folder, f"step-{step}")
    if accelerator.is_main_process and os.path.exists(temporary):
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    if accelerator.is_main_process:
        with open(os.path.join(temporary, "progress.json"), "w") as f:
            json.dump({"step": step}, f)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()


def finetune(
    config: FinetuneConfig, resume_from_checkpoint: str | None = None, max_steps_this_run: int | None = None
) -> dict:
    """Run the job described by `config`; returns a summary (steps, losses, output paths, dataset stats).

    Args:
        config: the run.
        resume_from_checkpoint: a `step-<n>` folder, or `"latest"` for the newest one in `output_dir`.
        max_steps_this_run: stop after this many optimizer steps in total (simulates an interruption).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from ..data.reader import load_segmentation_dataset
    from ..hub.loading import FINETUNE_CONFIG_NAME, MERGED_FOLDER, load_model
    from .embeddings import cache_image_embeddings

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=config.cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    set_seed(config.seed)
    # Any model form; the model is named portably, which is what the saved adapter records as its base.
    model, processor, _ = load_model(config.model, merge_adapter=True, verbose=accelerator.is_main_process)
    image_size = processor.image_size
    with accelerator.main_process_first():
        dataset, stats = load_segmentation_dataset(
            config.dataset, config.split, config.image_column, config.mask_column, config.mask_format
        )
        dataset = add_example_index(dataset)
        if config.cache_embeddings:
            cache_dir = config.cache_dir or os.path.join(config.output_dir, "embedding_cache")
            dataset = cache_image_embeddings(
                dataset,
                model.to(accelerator.device),
                processor,
                cache_dir,
                config.image_column,
            )

    if config.lora_r > 0:
        model = apply_lora(
            model,
            config.lora_r,
            config.lora_alpha,
            config.lora_dropout,
            config.target_modules,
            config.modules_to_save,
            verbose=accelerator.is_main_process,
        )
    else:
        freeze_for_decoder_training(model)
    collator = SamTrainingCollator(
        processor,
        prompt_types=config.prompt_types,
        max_prompts=config.max_prompts,
        num_points=config.num_points,
        image_column=config.image_column,
        mask_column=config.mask_column,
        mask_format=stats.mask_format,
        seed=config.seed,
        use_cached_embeddings=config.cache_embeddings,
    )
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, collate_fn=collator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes / config.gradient_accumulation_steps)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step = 0
    if resume_from_checkpoint == "latest":
        resume_from_checkpoint = latest_checkpoint(config.output_dir)
    if resume_from_checkpoint:
        accelerator.load_state(resume_from_checkpoint)
        with open(os.path.join(resume_from_checkpoint, "progress.json")) as f:
            step = json.load(f)["step"]
    stop_at = min(total_steps, max_steps_this_run or total_steps)
    batches_per_step = config.gradient_accumulation_steps
    losses = []
    model.train()
    for epoch in range(step // steps_per_epoch, num_epochs):
        if step >= stop_at:
            break
        collator.set_epoch(epoch)
        loader.set_epoch(epoch)
        skip = (step - epoch * steps_per_epoch) * batches_per_step
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        if hasattr(epoch_loader, "set_epoch"):
            epoch_loader.set_epoch(epoch)
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                output = model(**batch)
                loss = output.loss
                for click in range(config.correction_clicks):
                    rng = np.random.default_rng((config.seed, step, accelerator.process_index, click))
                    batch = add_correction_click(
                        batch, output.pred_masks, output.iou_scores, output.image_embeddings, rng, image_size
                    )
                    output = model(**batch, multimask_output=False)
                    loss = loss + output.loss
                loss = loss / (1 + config.correction_clicks)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                losses.append(accelerator.gather(loss.detach()[None]).mean().item())
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    _save_checkpoint(accelerator, config.output_dir, step)
                if step >= stop_at:
                    break

    summary = {
        "steps": step,
        "losses": losses,
        "num_processes": accelerator.num_processes,
        "stats": asdict(stats) | {"unusable": dict(stats.unusable)},
    }
    accelerator.wait_for_everyone()
    if step >= total_steps and accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        # SAM has no vocabulary: skip PEFT's check of the base's embeddings, which looks the base up online.
        unwrapped.save_pretrained(
            config.output_dir, **({"save_embedding_layers": False} if config.lora_r > 0 else {})
        )
        processor.save_pretrained(config.output_dir)
        summary["output_dir"] = config.output_dir
        if config.lora_r > 0 and config.merge:
            merged_dir = os.path.join(config.output_dir, MERGED_FOLDER)
            unwrapped.merge_and_unload().save_pretrained(merged_dir)
            processor.save_pretrained(merged_dir)
            summary["merged_dir"] = merged_dir
        with open(os.path.join(config.output_dir, FINETUNE_CONFIG_NAME), "w") as f:
            json.dump(asdict(config), f, indent=2)
    accelerator.wait_for_everyone()
    return summary

"""The fine-tuning loop: accelerate training with atomic checkpoints, exact resume and a step log.

`sam_hf.training.job.run_finetune` runs it (for `training/finetune.py` under `accelerate launch` and for
`sam-hf finetune`) and adds evaluation, summary and card. Runs on CPU, one GPU or DDP over several
processes/nodes, with mixed precision and gradient accumulation. Under a launcher with no GPU visible
(`accelerate launch --multi_gpu --num_processes N`, torchrun), the N processes form one world on CPU (gloo);
a world smaller than the launcher started is an error, never N separate trainings.

Every optimizer step appends `{"step", "loss", "lr", "elapsed_s"}` to `<output_dir>/train_log.jsonl`
(`TRAIN_LOG_NAME`) and, when `tensorboard` is installed, to TensorBoard in `<output_dir>/tensorboard`.

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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .collator import PROMPT_TYPES, SamTrainingCollator, add_correction_click, add_example_index
from .lora import LORA_TARGET_MODULES, apply_lora, freeze_for_decoder_training

if TYPE_CHECKING:
    from ..hub import ResolvedModel

__all__ = ["TRAIN_LOG_NAME", "FinetuneConfig", "finetune", "latest_checkpoint", "launched_world_size"]

TRAIN_LOG_NAME = "train_log.jsonl"
_CHECKPOINT = re.compile(r"^step-(\d+)$")
# Where launchers (torchrun / `accelerate launch`, MPI implementations) put the number of processes started.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# What the model card and TensorBoard report about a run.
_HYPERPARAMETERS = ("prompt_types", "max_prompts", "lora_r", "epochs", "max_steps", "batch_size",
                    "learning_rate", "gradient_accumulation_steps", "mixed_precision", "seed")  # fmt: skip


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs (the YAML config and the CLI map onto these fields).

    `lora_r=0` means full decoder fine-tuning instead of LoRA. `correction_clicks=N` adds N decoder passes per
    step as in SAM's interactive training (a click in the previous prediction's error, its logits fed back,
    one output mask); the loss averages all passes. `checkpoint_every=0` disables intermediate
    checkpoints; `max_steps` (optimizer steps) overrides `epochs` when set. `cpu=True` trains on CPU even
    when a GPU is visible (a launched run with no GPU visible uses the CPU without it).

    The last four fields belong to the job around the loop (`sam_hf.training.job.run_finetune`):
    `eval_split` is the split of `dataset` the base and the fine-tuned model are measured on (`"auto"`:
    `test` or `validation` when the dataset is a saved `DatasetDict` with one; `None`: no evaluation),
    `eval_prompts` the protocol's prompt types, `eval_max_images` caps the images measured, and
    `push_to_hub` is a repository id (`user/name`) to upload the result to.
    """

    model: str
    dataset: str
    output_dir: str = "out"
    split: str | None = None
    image_column: str = "image"
    mask_column: str = "label"
    mask_format: str = "auto"
    image_root: str | None = None
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
    eval_split: str | None = "auto"
    eval_prompts: list[str] = field(default_factory=lambda: ["point", "3point", "box", "jittered_box"])
    eval_max_images: int | None = None
    push_to_hub: str | None = None

    def hyperparameters(self) -> dict[str, str | int | float | None]:
        """The settings a model card and TensorBoard report, flat (lists joined with commas)."""
        values = {name: getattr(self, name) for name in _HYPERPARAMETERS}
        return {name: ",".join(v) if isinstance(v, list) else v for name, v in values.items()}


def launched_world_size() -> int:
    """How many processes the launcher that started this one started in all (1 without a launcher)."""
    return max(int(os.environ.get(name, 1)) for name in _WORLD_SIZE_VARIABLES)


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


def _accelerator(config: FinetuneConfig):
    """The run's `Accelerator`: one world of all launched processes, logging to TensorBoard when installed."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, is_tensorboard_available

    launched = launched_world_size()
    # accelerate forms a multi-process world on CPU (gloo) only when told cpu=True, and
    # `accelerate launch --multi_gpu` does not tell it: without a GPU each process would train alone.
    cpu = config.cpu or (launched > 1 and not torch.accelerator.is_available())
    tensorboard = is_tensorboard_available()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        log_with="tensorboard" if tensorboard else None,
        project_dir=config.output_dir,
    )
    if accelerator.num_processes < launched:
        raise RuntimeError(
            f"the launcher started {launched} processes but they formed a world of "
            f"{accelerator.num_processes} ({accelerator.distributed_type}): each would train alone and write "
            f"the same output_dir {config.output_dir!r}. Give each process a GPU, or set `cpu: true` in the "
            "config to train them together on CPU"
        )
    if tensorboard:
        accelerator.init_trackers("tensorboard", config=config.hyperparameters())
    return accelerator


def _start_train_log(path: str, step: int) -> float:
    """Keep the log's records up to `step` (the run resumes there); return the time they had taken."""
    records = []
    if step and os.path.exists(path):
        with open(path) as f:
            # a line without its newline was cut by the interruption
            records = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= step]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.writelines(records)
    return json.loads(records[-1])["elapsed_s"] if records else 0.0


def finetune(
    config: FinetuneConfig,
    resume_from_checkpoint: str | None = None,
    max_steps_this_run: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    *,
    resolved: ResolvedModel | None = None,
) -> dict:
    """Run the job described by `config`; returns a summary (steps, losses, output paths, dataset stats).

    Args:
        config: the run.
        resume_from_checkpoint: a `step-<n>` folder, or `"latest"` for the newest one in `output_dir`.
        max_steps_this_run: stop after this many optimizer steps in total (simulates an interruption).
        on_step: called in the main process after each optimizer step with `(step, total_steps)`, e.g. to
            show progress.
        resolved: what `sam_hf.hub.locate_model` made of `config.model`, loaded as it is; None: `config.model` is
            located here.

    Raises:
        ValueError: `resolved` is not the model `config.model` names.
    """
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from ..data.reader import load_segmentation_dataset
    from ..hub.loading import FINETUNE_CONFIG_NAME, MERGED_FOLDER, load_model, portable_model_name
    from ..hub.saving import save_model
    from .embeddings import cache_image_embeddings

    if resolved is not None and resolved.name != portable_model_name(config.model):
        raise ValueError(
            f"resolved must be what locate_model made of config.model {config.model!r}, got {resolved.name!r}"
        )
    accelerator = _accelerator(config)
    set_seed(config.seed)
    with accelerator.main_process_first():
        dataset, stats = load_segmentation_dataset(
            config.dataset,
            config.split,
            config.image_column,
            config.mask_column,
            config.mask_format,
            config.image_root,
        )
        if len(dataset) == 0:
            raise ValueError(
                f"dataset {config.dataset!r} (split {config.split or 'default'}): expected at least one "
                f"usable row (an image with a non-empty mask of its size), got 0 of {stats.num_rows} "
                f"rows usable (unusable: {dict(stats.unusable)}); check image_column {config.image_column!r}, "
                f"mask_column {config.mask_column!r} and mask_format {config.mask_format!r}"
            )
        dataset = add_example_index(dataset)
    # Any model form; the model is named portably, which is what the saved adapter records as its base.
    model, processor, _ = load_model(
        config.model if resolved is None else resolved,
        merge_adapter=True,
        verbose=accelerator.is_main_process,
    )
    image_size = processor.image_size
    feature_names = model.image_feature_names  # what the decoder needs of an image: cached, reused per click
    with accelerator.main_process_first():
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
        image_feature_names=feature_names,
    )
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, collate_fn=collator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes / config.gradient_accumulation_steps)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    # The prepared scheduler advances once per process at every optimizer step (accelerate's convention).
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total_steps * accelerator.num_processes)
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
    log_path = os.path.join(config.output_dir, TRAIN_LOG_NAME)
    elapsed_before = _start_train_log(log_path, step) if accelerator.is_main_process else 0.0
    progress = tqdm(
        total=stop_at, initial=step, desc="fine-tuning", unit="step", disable=not accelerator.is_main_process
    )
    start = time.perf_counter()
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
                    features = {name: output[name] for name in feature_names}
                    batch = add_correction_click(
                        batch, output.pred_masks, output.iou_scores, features, rng, image_size
                    )
                    output = model(**batch, multimask_output=False)
                    loss = loss + output.loss
                loss = loss / (1 + config.correction_clicks)
                accelerator.backward(loss)
                learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                losses.append(accelerator.gather(loss.detach()[None]).mean().item())
                record = {
                    "step": step,
                    "loss": losses[-1],
                    "lr": learning_rate,
                    "elapsed_s": round(elapsed_before + time.perf_counter() - start, 3),
                }
                accelerator.log({"train/loss": record["loss"], "train/lr": learning_rate}, step=step)
                if accelerator.is_main_process:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                    progress.update()
                    if on_step is not None:
                        on_step(step, total_steps)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    _save_checkpoint(accelerator, config.output_dir, step)
                if step >= stop_at:
                    break
    progress.close()
    for tracker in accelerator.trackers:
        tracker.finish()

    summary = {
        "steps": step,
        "losses": losses,
        "num_processes": accelerator.num_processes,
        "train_log": log_path,
        "stats": asdict(stats) | {"unusable": dict(stats.unusable)},
    }
    accelerator.wait_for_everyone()
    if step >= total_steps and accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_model(unwrapped, config.output_dir, processor)
        summary["output_dir"] = config.output_dir
        if config.lora_r > 0 and config.merge:
            merged_dir = os.path.join(config.output_dir, MERGED_FOLDER)
            save_model(unwrapped.merge_and_unload(), merged_dir, processor)
            summary["merged_dir"] = merged_dir
        with open(os.path.join(config.output_dir, FINETUNE_CONFIG_NAME), "w") as f:
            json.dump(asdict(config), f, indent=2)
    accelerator.wait_for_everyone()
    return summary

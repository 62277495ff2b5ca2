"""Pretraining of the small SAM shipped as `sam-hf-tiny`, end to end (encoder included), on procedural shapes.

`pretrain(load_recipe(path), out)` runs a recipe; `training/pretrain_tiny.py` is its command line:

    python training/pretrain_tiny.py --config training/configs/pretrain_tiny_cpu.yaml --out runs/tiny

Two recipes: `configs/pretrain_tiny_cpu.yaml` (the shipped weights: the preset's 128 px input, bf16 autocast;
about 84 minutes on a 2-core CPU) and `configs/pretrain_tiny.yaml` (192 px in float32; ~6 hours on that CPU,
minutes on a GPU). A second stage, `configs/pretrain_tiny_clicks_cpu.yaml`, starts from a model (`init_from`, any
form `hub.loading.load_model` reads), keeps its image encoder (`freeze_image_encoder`) and runs up to
`max_untrained_correction_iterations` forward-only correction passes before the trained ones, so the decoder
learns prompts of many clicks.

Each step draws `batch_size` fresh images of `sam_hf.data.synthetic` (split "train"; sample indices
are `step * batch_size + i`, so the data order is a function of the step) and `prompts_per_image` objects
per image. Half the prompts are one positive point with three output masks, half a box or 2-3 points with
one output mask (as `sam-hf evaluate` prompts them); then, every `correction_every` steps,
`correction_iterations` decoder passes add a correction click in the larger error region
(`sam_hf.prompting.simulation.correction_clicks`) and feed back the previous low-resolution logits, as in
SAM's interactive training. The loss of every pass is `sam_hf.modeling.loss.sam_loss` (recipe weights
`focal_weight`, `dice_weight`) against the full-size masks, on logits upsampled as at inference
(`loss_at_image_size: true`), or against labels at `config.mask_size`; the image is encoded once per step.

Resumable: `checkpoint.pt` (model, optimizer, scheduler, step) is written every `checkpoint_every` steps (temp
file + rename) and picked up by rerunning the same recipe into the same folder. At the end the model is saved
with `save_pretrained` to `<out>/model` and `<out>/recipe.json` records the recipe, the device and the timing;
`training/ship_tiny.py --run <out>` makes it the package's `sam-hf-tiny`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.synthetic import generate_sample
from ..hub.loading import load_model
from ..modeling.configuration_sam_hf import SamHFConfig
from ..modeling.image_frame import SAM_PIXEL_MEAN, SAM_PIXEL_STD, normalize_and_pad
from ..modeling.loss import sam_loss
from ..modeling.modeling_sam_hf import SamHFModel
from ..processing_sam_hf import SamHFProcessor
from ..prompting.batching import append_points, pad_points
from ..prompting.simulation import correction_clicks, sample_box, sample_points

__all__ = ["load_recipe", "pretrain", "train"]

_MAX_POINTS = 3  # points of a single-mask prompt (box prompts use none)
_AUTOCAST = (None, "bf16")


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe in the YAML file `path`, with `overrides` (existing keys only) applied and checked."""
    recipe = yaml.safe_load(Path(path).read_text())
    for key, value in (overrides or {}).items():
        if key not in recipe:
            raise ValueError(f"recipe override keys must be among {sorted(recipe)}, got {key!r}")
        recipe[key] = value
    if recipe.get("autocast") not in _AUTOCAST:
        raise ValueError(f"recipe autocast must be null or 'bf16', got {recipe['autocast']!r}")
    return recipe


def pretrain(
    recipe: dict[str, Any],
    out: str | Path,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_steps: int | None = None,
) -> Path | None:
    """Run (or resume) `recipe` into the run folder `out`; when its last step is done, save the model.

    Args:
        recipe: from `load_recipe`.
        out: run folder: `checkpoint.pt`, `train_log.jsonl`, and at the end `model/` (`sam_hf.hub.save_model`) and
            `recipe.json` (recipe, device, timing).
        device: torch device (default: cuda if available, else cpu).
        num_workers: data-loading worker processes.
        max_steps: stop (resumably) after this many steps.

    Returns:
        The saved model folder, or None if the run stopped before its last step (rerun to resume).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    start = time.perf_counter()
    model = train(recipe, out, device, num_workers, max_steps)
    state = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    if state["step"] + 1 < recipe["steps"]:
        return None
    from ..hub.saving import save_model

    save_model(model, out / "model")
    (out / "recipe.json").write_text(
        json.dumps(
            {
                "recipe": recipe,
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor() or "cpu",
                "torch": torch.__version__,
                "train_time_s": state["elapsed_s"],
                "wall_time_this_invocation_s": round(time.perf_counter() - start, 1),
            },
            indent=2,
        )
    )
    return out / "model"


class _PromptedShapes(Dataset):
    """Sample `index` -> image tensor, `P` prompts and their target masks.

    Returns a dict of `pixel_values (3, S, S)`, `labels (P, L, L)` in {0, 1} (L = S with the recipe's
    `loss_at_image_size`, else ms), `masks (P, ms, ms)` bool (for correction clicks), `point_coords
    (P, 3, 2)` / `point_labels (P, 3)` (padded with `PAD_LABEL`) and `boxes (P, 4)` (NaN rows: no box). The
    first `P // 2` prompts (the multimask half) are one positive point; the others a box or 2-3 points
    (single mask). Coordinates are XY in the model frame (the image is generated at the model's size).
    """

    def __init__(self, recipe: dict, image_size: int, mask_size: int):
        self.recipe = recipe
        self.image_size = image_size
        self.mask_size = mask_size

    def __len__(self) -> int:
        return self.recipe["steps"] * self.recipe["batch_size"]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        recipe = self.recipe
        sample = generate_sample(index, "train", recipe["domain"], self.image_size)
        rng = np.random.default_rng((recipe["seed"], index))
        num_prompts = recipe["prompts_per_image"]
        chosen = rng.choice(len(sample.masks), num_prompts, replace=len(sample.masks) < num_prompts)
        masks = sample.masks[chosen]
        half = num_prompts // 2
        # Half a: one positive point each; half b: a box or 2-3 points. All padded to _MAX_POINTS.
        points = [sample_points(m, rng, num_positive=1) for m in masks[:half]]
        boxes = np.full((num_prompts, 4), np.nan, np.float32)
        for row, mask in enumerate(masks[half:], start=half):
            if rng.random() < 0.5:
                boxes[row] = sample_box(mask, rng, jitter=recipe["box_jitter"] * rng.random())
                points.append((np.zeros((0, 2)), np.zeros(0)))
            else:
                negative = int(rng.random() < 0.3)
                points.append(
                    sample_points(
                        mask, rng, num_positive=int(rng.integers(2, 4)) - negative, num_negative=negative
                    )
                )
        coords, point_labels = pad_points(points, num_points=_MAX_POINTS)
        image = torch.from_numpy(sample.image).permute(2, 0, 1)[None]
        pixels = normalize_and_pad(image, image.shape[-1], SAM_PIXEL_MEAN, SAM_PIXEL_STD)[0]
        low_res = np.stack([_downsample(m, self.mask_size) for m in masks])
        labels = masks if recipe["loss_at_image_size"] else low_res
        return {
            "pixel_values": pixels,
            "labels": torch.from_numpy(labels.astype(np.float32)),
            "masks": torch.from_numpy(low_res),
            "point_coords": torch.from_numpy(coords),
            "point_labels": torch.from_numpy(point_labels),
            "boxes": torch.from_numpy(boxes),
            "index": torch.tensor(index),
        }


def _initial_model(recipe: dict) -> SamHFModel:
    """The recipe's `init_from` model (any form `sam_hf.hub.loading.load_model` reads; a later stage starts
    from an earlier stage's weights), else a random init of its `preset` at its `image_size`."""
    if recipe.get("init_from"):
        model, _, _ = load_model(recipe["init_from"], merge_adapter=True)
        if not isinstance(model, SamHFModel):
            raise ValueError(f"recipe init_from must name a SAM model, got {recipe['init_from']!r}")
        if recipe.get("image_size") not in (None, model.config.image_size):
            raise ValueError(
                f"recipe image_size {recipe['image_size']} differs from init_from's {model.config.image_size}"
            )
        return model
    config = SamHFConfig.from_preset(recipe["preset"])
    if recipe.get("image_size"):  # a lower input resolution than the preset's (a cheaper CPU recipe)
        config.vision_config.image_size = recipe["image_size"]
    return SamHFModel(config)


def _downsample(mask: np.ndarray, size: int) -> np.ndarray:
    """`(H, W)` bool -> `(size, size)` bool: area average, then majority."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BOX)
    return np.asarray(img) >= 128


def _training_loss(
    model: SamHFModel, batch: dict[str, torch.Tensor], recipe: dict, step: int
) -> torch.Tensor:
    """Sum over the first pass and the trained correction passes of the mean `sam_loss` of both prompt halves."""
    with torch.set_grad_enabled(not recipe.get("freeze_image_encoder", False)):
        features = model.get_image_features(batch["pixel_values"])  # image_embeddings (B, C, g, g), ...
    labels = batch["labels"]  # (B, P, L, L)
    half = labels.shape[1] // 2
    out_a = model(
        **features,
        input_points=batch["point_coords"][:, :half, :1],
        input_labels=batch["point_labels"][:, :half, :1],
        multimask_output=True,
    )
    out_b = model(
        **features,
        input_points=batch["point_coords"][:, half:],
        input_labels=batch["point_labels"][:, half:],
        input_boxes=batch["boxes"][:, half:],
        multimask_output=False,
    )
    weights = {"focal_weight": recipe["focal_weight"], "dice_weight": recipe["dice_weight"]}
    processor = SamHFProcessor.from_model_config(model.config)  # its upsampling of the logits, for L = S
    loss = (
        _loss(out_a, labels[:, :half], weights, processor)
        + _loss(out_b, labels[:, half:], weights, processor)
    ) / 2
    # Previous prediction of every prompt: the best-scored of the three masks for the multimask half.
    best = out_a.iou_scores.argmax(-1)[..., None, None, None].expand(-1, -1, 1, *out_a.pred_masks.shape[-2:])
    logits = torch.cat([out_a.pred_masks.gather(2, best)[:, :, 0], out_b.pred_masks[:, :, 0]], dim=1)
    points, point_labels, boxes = batch["point_coords"], batch["point_labels"], batch["boxes"]
    image_size = model.config.image_size
    trained = recipe["correction_iterations"] if step % recipe["correction_every"] == 0 else 0
    # Untrained passes first (forward only, a number drawn per step), so the trained ones see long click
    # sequences, as `sam-hf evaluate`'s k-click protocol gives, at the cost of decoder forwards alone.
    most = recipe.get("max_untrained_correction_iterations", 0)
    untrained = int(np.random.default_rng((recipe["seed"], step)).integers(0, most + 1)) if trained else 0
    for iteration in range(untrained + trained):
        click, click_label = _correction_clicks(
            logits, batch["masks"], batch["index"], recipe["seed"], step, iteration
        )
        points, point_labels = append_points(
            points, point_labels, click * (image_size / logits.shape[-1]), click_label
        )
        with torch.set_grad_enabled(iteration >= untrained):
            out = model(
                **features,
                input_points=points,
                input_labels=point_labels,
                input_boxes=boxes,
                input_masks=logits.detach(),
                multimask_output=False,
            )
        if iteration >= untrained:
            loss = loss + _loss(out, labels, weights, processor)
        logits = out.pred_masks[:, :, 0]
    return loss


def _loss(output, labels: torch.Tensor, weights: dict[str, float], processor: SamHFProcessor) -> torch.Tensor:
    """`sam_loss` of `pred_masks (B, P, M, ms, ms)` against `labels (B, P, L, L)`.

    At L = image size (recipe `loss_at_image_size`) the logits go through the processor's `upscale_masks`,
    as at inference, so the loss scores the masks as they are evaluated, boundaries between mask cells
    included.
    """
    logits = output.pred_masks.float()
    if logits.shape[-1] != labels.shape[-1]:
        side = labels.shape[-2:]
        logits = processor.upscale_masks(logits.flatten(0, 1), side, side).reshape(*logits.shape[:3], *side)
    return sam_loss(logits, output.iou_scores.float(), labels, **weights)


def _correction_clicks(logits, masks, indices, seed, step, iteration):
    """One correction click per prompt, in mask-grid coordinates: `(B, P, 2)` XY and `(B, P)` labels.

    `prompting.simulation.correction_clicks` per image, from a generator seeded by the image's sample index,
    the step and the iteration, so the clicks do not depend on the batch composition.
    """
    predicted = (logits.detach() > 0).cpu().numpy()
    targets = masks.cpu().numpy()
    rounds = [
        correction_clicks(
            predicted[b], targets[b], np.random.default_rng((seed, int(indices[b]), step, iteration))
        )
        for b in range(predicted.shape[0])
    ]
    device = logits.device
    coords = torch.from_numpy(np.stack([c for c, _ in rounds])).to(device)
    return coords, torch.from_numpy(np.stack([lab for _, lab in rounds])).to(device)


def _attention_kernels(device: torch.device):
    """Context choosing the SDPA kernels for training. On CPU the flash kernel's backward is slow at the
    decoder's head width of 8 (256 image tokens x ~12 prompt tokens): the plain math kernel makes a
    `sam_hf_tiny` step at 128 px ~20 % faster there. Elsewhere torch picks."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()


def _lr_factor(step: int, recipe: dict) -> float:
    warmup = recipe["warmup_steps"]
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe["steps"] - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, elapsed: float) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "elapsed_s": elapsed,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    recipe: dict, out: Path, device: torch.device, num_workers: int = 0, max_steps: int | None = None
) -> SamHFModel:
    """Run (or resume) the recipe's steps into `out`; return the trained model (on `device`, eval mode).

    Writes `checkpoint.pt` and `train_log.jsonl`; `pretrain` adds the final model and `recipe.json`.
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe["seed"])
    model = _initial_model(recipe).to(device)
    config = model.config
    if recipe.get("freeze_image_encoder"):
        if not recipe.get("init_from"):
            raise ValueError(
                "recipe freeze_image_encoder needs init_from (the model whose encoder to keep): a random "
                "encoder would stay random"
            )
        model.image_encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=recipe["learning_rate"],
        weight_decay=recipe["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, recipe))
    checkpoint = out / "checkpoint.pt"
    start, elapsed = 0, 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, elapsed = state["step"], state["elapsed_s"]
        print(f"resuming at step {start}")
    dataset = _PromptedShapes(recipe, config.image_size, config.mask_size)
    batch_size = recipe["batch_size"]
    indices = range(start * batch_size, len(dataset))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers else None,
    )
    stop = min(recipe["steps"], max_steps if max_steps is not None else recipe["steps"])
    log = open(out / "train_log.jsonl", "a")
    model.train()
    tic = time.perf_counter()
    progress = tqdm(total=stop - start, desc="pretrain", mininterval=5)
    for step, batch in zip(range(start, stop), loader, strict=False):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with (
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.get("autocast") == "bf16"),
            _attention_kernels(device),
        ):
            loss = _training_loss(model, batch, recipe, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        scheduler.step()
        progress.update()
        if step % 25 == 0 or step == stop - 1:
            now = elapsed + time.perf_counter() - tic
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": round(loss.item(), 5),
                        "lr": scheduler.get_last_lr()[0],
                        "elapsed_s": round(now, 1),
                    }
                )
                + "\n"
            )
            log.flush()
            progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % recipe["checkpoint_every"] == 0 or step == stop - 1:
            _save_checkpoint(
                checkpoint, model, optimizer, scheduler, step + 1, elapsed + time.perf_counter() - tic
            )
    progress.close()
    log.close()
    return model.eval()

"""Pretrain the small SAM shipped as `sam-hf-tiny`, end to end (encoder included), on procedural shapes.

    python training/pretrain_tiny.py --config training/configs/pretrain_tiny_cpu.yaml --out runs/tiny

Two recipes: `configs/pretrain_tiny_cpu.yaml` (the shipped weights: the preset's 128 px input, bf16 autocast;
about 84 minutes on a 2-core CPU) and `configs/pretrain_tiny.yaml` (192 px in float32; ~6 hours on that CPU,
minutes on a GPU).

Each step draws `batch_size` fresh images of `sam_hf.data.synthetic` (split "train"; sample indices are
`step * batch_size + i`, so the data order is a function of the step) and `prompts_per_image` objects per
image. Half the prompts are one positive point with three output masks, half a box or 2-3 points with one
output mask (as `sam-hf evaluate` prompts them); then, every `correction_every` steps,
`correction_iterations` decoder passes add a correction click in the larger error region
(`sam_hf.prompting.simulation`) and feed back the previous low-resolution logits, as in SAM's interactive
training. The loss of every pass is `sam_hf.modeling.loss.sam_loss` (recipe weights `focal_weight`,
`dice_weight`) against the full-size masks, on logits upsampled as at inference (`loss_at_image_size:
true`), or against labels at `config.mask_size`; the image is encoded once per step.

Resumable: `checkpoint.pt` (model, optimizer, scheduler, step) is written every `checkpoint_every` steps
(temp file + rename) and picked up by rerunning the same command. At the end the model is saved with
`save_pretrained` to `<out>/model` and `<out>/recipe.json` records the recipe, the device and the timing;
`training/ship_tiny.py --run <out>` makes it the package's `sam-hf-tiny`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sam_hf import SamHFConfig, SamHFModel
from sam_hf.modeling.loss import sam_loss
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.prompting.simulation import sample_box, sample_correction_click, sample_points
from sam_hf.data.synthetic import generate_sample

_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
_PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
_PAD = -10  # point label the model masks out of attention
_MAX_POINTS = 3  # points of a single-mask prompt (box prompts use none)


class _PromptedShapes(Dataset):
    """Sample `index` -> image tensor, `P` prompts and their target masks.

    Returns a dict of `pixel_values (3, S, S)`, `labels (P, L, L)` in {0, 1} (L = S with the recipe's
    `loss_at_image_size`, else ms), `masks (P, ms, ms)` bool (for correction clicks), `point_coords_a
    (Pa, 1, 2)` / `point_labels_a (Pa, 1)` for the multimask half, and `point_coords_b (Pb, 3, 2)`,
    `point_labels_b (Pb, 3)`, `boxes_b (Pb, 4)` (NaN rows: no box) for the single-mask half; coordinates XY
    in the model frame (the image is generated at the model's size).
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
        coords_a = np.stack([sample_points(m, rng, num_positive=1)[0] for m in masks[:half]])
        coords_b = np.zeros((num_prompts - half, _MAX_POINTS, 2), np.float32)
        labels_b = np.full((num_prompts - half, _MAX_POINTS), _PAD, np.int64)
        boxes_b = np.full((num_prompts - half, 4), np.nan, np.float32)
        for row, mask in enumerate(masks[half:]):
            if rng.random() < 0.5:
                boxes_b[row] = sample_box(mask, rng, jitter=recipe["box_jitter"] * rng.random())
            else:
                negative = int(rng.random() < 0.3)
                coords, labels = sample_points(
                    mask, rng, num_positive=int(rng.integers(2, 4)) - negative, num_negative=negative
                )
                coords_b[row, : len(coords)] = coords
                labels_b[row, : len(labels)] = labels
        pixels = (sample.image.astype(np.float32) - _PIXEL_MEAN) / _PIXEL_STD
        low_res = np.stack([_downsample(m, self.mask_size) for m in masks])
        labels = masks if recipe["loss_at_image_size"] else low_res
        return {
            "pixel_values": torch.from_numpy(pixels).permute(2, 0, 1),
            "labels": torch.from_numpy(labels.astype(np.float32)),
            "masks": torch.from_numpy(low_res),
            "point_coords_a": torch.from_numpy(coords_a),
            "point_labels_a": torch.ones(half, 1, dtype=torch.long),
            "point_coords_b": torch.from_numpy(coords_b),
            "point_labels_b": torch.from_numpy(labels_b),
            "boxes_b": torch.from_numpy(boxes_b),
            "index": torch.tensor(index),
        }


def _downsample(mask: np.ndarray, size: int) -> np.ndarray:
    """`(H, W)` bool -> `(size, size)` bool: area average, then majority."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BOX)
    return np.asarray(img) >= 128


def _training_loss(
    model: SamHFModel, batch: dict[str, torch.Tensor], recipe: dict, step: int
) -> torch.Tensor:
    """Sum over the first pass and the correction passes of the mean `sam_loss` of both prompt halves."""
    embeddings = model.get_image_embeddings(batch["pixel_values"])  # (B, C, g, g)
    labels = batch["labels"]  # (B, P, L, L)
    half = batch["point_coords_a"].shape[1]
    out_a = model(
        image_embeddings=embeddings,
        input_points=batch["point_coords_a"],
        input_labels=batch["point_labels_a"],
        multimask_output=True,
    )
    out_b = model(
        image_embeddings=embeddings,
        input_points=batch["point_coords_b"],
        input_labels=batch["point_labels_b"],
        input_boxes=batch["boxes_b"],
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
    points = torch.cat([_pad_to(batch["point_coords_a"], _MAX_POINTS, 0.0), batch["point_coords_b"]], dim=1)
    point_labels = torch.cat(
        [_pad_to(batch["point_labels_a"], _MAX_POINTS, _PAD), batch["point_labels_b"]], dim=1
    )
    boxes = torch.cat([torch.full_like(batch["boxes_b"][:, :half], float("nan")), batch["boxes_b"]], dim=1)
    image_size = model.config.vision_config.image_size
    iterations = recipe["correction_iterations"] if step % recipe["correction_every"] == 0 else 0
    for iteration in range(iterations):
        click, click_label = _correction_clicks(
            logits, batch["masks"], batch["index"], recipe["seed"], step, iteration
        )
        scale = image_size / logits.shape[-1]
        points = torch.cat([points, (click * scale).to(points)], dim=2)
        point_labels = torch.cat([point_labels, click_label.to(point_labels)], dim=2)
        out = model(
            image_embeddings=embeddings,
            input_points=points,
            input_labels=point_labels,
            input_boxes=boxes,
            input_masks=logits.detach(),
            multimask_output=False,
        )
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


def _pad_to(tensor: torch.Tensor, length: int, value: float) -> torch.Tensor:
    """Pad dim 2 (points) of `(B, P, N, ...)` to `length`."""
    pad = list(tensor.shape)
    pad[2] = length - tensor.shape[2]
    return torch.cat([tensor, torch.full(pad, value, dtype=tensor.dtype, device=tensor.device)], dim=2)


def _correction_clicks(logits, masks, indices, seed, step, iteration):
    """One correction click per prompt, in mask-grid coordinates: `(B, P, 1, 2)` XY and `(B, P, 1)` labels."""
    predicted = (logits.detach() > 0).cpu().numpy()
    targets = masks.cpu().numpy()
    coords = np.zeros((*predicted.shape[:2], 1, 2), np.float32)
    labels = np.full((*predicted.shape[:2], 1), _PAD, np.int64)
    for b in range(predicted.shape[0]):
        rng = np.random.default_rng((seed, int(indices[b]), step, iteration))
        for p in range(predicted.shape[1]):
            if not np.array_equal(predicted[b, p], targets[b, p]):
                coord, label = sample_correction_click(predicted[b, p], targets[b, p], rng)
                coords[b, p, 0], labels[b, p, 0] = coord, label
    device = logits.device
    return torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device)


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
    recipe: dict, out: Path, device: torch.device, num_workers: int, max_steps: int | None = None
) -> SamHFModel:
    """Run (or resume) the recipe into `out`; return the trained model (on `device`, eval mode)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe["seed"])
    config = SamHFConfig.from_preset(recipe["preset"])
    if recipe.get("image_size"):  # a lower input resolution than the preset's (a cheaper CPU recipe)
        config.vision_config.image_size = recipe["image_size"]
    model = SamHFModel(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"]
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
    dataset = _PromptedShapes(recipe, config.vision_config.image_size, config.mask_size)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(Path(__file__).parent / "configs" / "pretrain_tiny.yaml"))
    parser.add_argument("--out", required=True, help="run folder (checkpoint, log, final model)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1) - 1)
    parser.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe entries (e.g. for tests)"
    )
    args = parser.parse_args(argv)
    recipe = yaml.safe_load(Path(args.config).read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in recipe:
            raise ValueError(f"--set key must be one of {sorted(recipe)}, got {key!r}")
        recipe[key] = yaml.safe_load(value)
    if recipe.get("autocast") not in (None, "bf16"):
        raise ValueError(f"recipe autocast must be null or 'bf16', got {recipe['autocast']!r}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    start = time.perf_counter()
    model = train(recipe, out, device, args.num_workers, args.max_steps)
    state = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    if state["step"] + 1 < recipe["steps"]:
        print(f"stopped at step {state['step'] + 1} of {recipe['steps']}; rerun to resume")
        return
    model.save_pretrained(out / "model")
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
    print(f"saved {out / 'model'}")


if __name__ == "__main__":
    main()

"""Cross-domain check of the shipped sam-hf-tiny: zero-shot vs a decoder LoRA adapter on the `cells` domain.

    PYTHONPATH=src python benchmarks/bench_cross_domain.py [--steps 150] [--train-images 64] [--test-images 50]

`sam-hf-tiny` was pretrained on the procedural `shapes` domain only. This fits a LoRA adapter (rank 8 on the
decoder's attention projections; encoder frozen, embeddings cached) on `cells` split "train" and measures
1-point / 3-point / box mIoU of the model with the adapter off and on, on `cells` split "test", with the
project's evaluation protocol (`sam_hf.evaluation.evaluate_model`), same prompts for both. Prints the ratio.

The fitting loop here is deliberately minimal (AdamW, box or 1-point prompts, `sam_loss`); the package's
fine-tuning (`sam_hf.training`, `sam-hf finetune`) is the tool for real use.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sam_hf import SamHFModel
from sam_hf.evaluation import EvaluationProtocol, evaluate_model
from sam_hf.pretrained import shipped_model_path
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.training.prompts import sample_box, sample_points
from sam_hf.training.synthetic import generate_sample

_LORA_TARGETS = r"mask_decoder\..*\.(q_proj|k_proj|v_proj|out_proj)"
_PROMPTS_PER_IMAGE = 8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    path = shipped_model_path("sam-hf-tiny")
    processor = SamHFProcessor.from_pretrained(path)
    size = processor.image_size
    model = get_peft_model(
        SamHFModel.from_pretrained(path), LoraConfig(r=8, lora_alpha=16, target_modules=_LORA_TARGETS)
    )
    model.print_trainable_parameters()

    train = [generate_sample(i, "train", "cells", size) for i in range(args.train_images)]
    with torch.inference_mode():
        pixels = processor.preprocess_images([s.image for s in train])[0]
        embeddings = torch.cat([model.get_image_embeddings(chunk) for chunk in pixels.split(16)])
    embeddings = embeddings.clone()  # a normal tensor, usable in autograd

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    rng = np.random.default_rng(args.seed)
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        chosen = rng.choice(len(train), args.batch_size, replace=False)
        masks = [train[i].masks[rng.choice(len(train[i].masks), _PROMPTS_PER_IMAGE)] for i in chosen]
        labels = torch.stack(
            [torch.stack([processor.mask_to_label(m, (size, size)) for m in ms]) for ms in masks]
        )
        if step % 2:  # alternate 1-point steps (three masks) and box steps (one mask)
            points = [[sample_points(m, rng, num_positive=1)[0] for m in ms] for ms in masks]
            out = model(
                image_embeddings=embeddings[chosen],
                input_points=torch.from_numpy(np.asarray(points, np.float32)),
                input_labels=torch.ones(args.batch_size, _PROMPTS_PER_IMAGE, 1, dtype=torch.long),
                multimask_output=True,
                labels=labels,
            )
        else:
            boxes = [[sample_box(m, rng, jitter=0.05) for m in ms] for ms in masks]
            out = model(
                image_embeddings=embeddings[chosen],
                input_boxes=torch.from_numpy(np.asarray(boxes, np.float32)),
                multimask_output=False,
                labels=labels,
            )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {out.loss.item():.4f}")
    fit_s = time.perf_counter() - start
    model.eval()

    protocol = EvaluationProtocol(prompts=("point", "3point", "box"), seed=args.seed)
    test = [
        (s.image, s.masks)
        for s in (generate_sample(i, "test", "cells", size) for i in range(args.test_images))
    ]
    with model.disable_adapter():
        zero_shot = evaluate_model(model, processor, test, protocol, progress=False)
    adapted = evaluate_model(model, processor, test, protocol, progress=False)
    print(f"\ncells test split, {args.test_images} images; LoRA fitted in {fit_s:.1f} s ({args.steps} steps)")
    print(f"{'prompt':8s} {'zero-shot':>10s} {'LoRA':>8s} {'ratio':>7s}")
    for prompt in protocol.prompts:
        before, after = zero_shot[prompt]["mean_iou"], adapted[prompt]["mean_iou"]
        print(f"{prompt:8s} {before:10.4f} {after:8.4f} {after / before:7.3f}")


if __name__ == "__main__":
    main()

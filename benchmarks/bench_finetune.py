"""Decoder fine-tuning steps per second: cached image embeddings vs encoding every step.

The usual notebook recipe (the Hugging Face SAM fine-tuning notebook) runs the frozen image encoder inside
every training step and trains on one box prompt per image; `sam_hf` caches the embeddings once
(`training.embeddings`) and trains the decoder on them. Same model (ViT-B size, seeded random weights, LoRA
r=8 on the decoder), same batches, same process. Two configurations, each with both rates and the ratio:
the notebook's (1 box prompt per image; the headline, target >= 20x) and sam_hf's default (8 prompts per
image, boxes and points), where the decoder does 8x the work per step and the ratio is bounded by
~(1000 + 11 * 8) / (11 * 8) GFLOP.

    python benchmarks/bench_finetune.py [--preset vit_b] [--cached-steps 20] [--uncached-steps 2]
"""

import argparse
import time

import numpy as np
import torch

from sam_hf import SamHFConfig, SamHFModel
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.training.collator import EMBEDDINGS_COLUMN, INDEX_COLUMN, SamTrainingCollator
from sam_hf.training.lora import apply_lora


def _examples(batch_size: int, size: int = 480) -> list[dict]:
    rng = np.random.default_rng(0)
    examples = []
    for index in range(batch_size):
        label = np.zeros((size, size), np.uint8)
        for instance in range(1, 9):
            y, x = rng.integers(0, size - 80, 2)
            label[y : y + 80, x : x + 80] = instance
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        examples.append({"image": image, "label": label, INDEX_COLUMN: index})
    return examples


def _steps_per_second(model, optimizer, collator, examples, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(**collator(examples)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="vit_b")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--cached-steps", type=int, default=20)
    parser.add_argument("--uncached-steps", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset(args.preset))
    processor = SamHFProcessor.from_model_config(model.config)
    examples = _examples(args.batch_size)
    model = apply_lora(model, r=8)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    start = time.perf_counter()
    pixel_values = processor.preprocess_images([e["image"] for e in examples])[0]
    with torch.inference_mode():
        embeddings = model.get_base_model().get_image_embeddings(pixel_values)
    encode_seconds = time.perf_counter() - start
    cached_examples = [e | {EMBEDDINGS_COLUMN: embeddings[i].clone()} for i, e in enumerate(examples)]

    print(f"preset={args.preset} batch={args.batch_size} threads={torch.get_num_threads()}")
    print(f"one-off embedding pass for the batch: {encode_seconds:.2f} s")
    for label, prompt_types, prompts in (
        ("notebook setup: 1 box prompt per image", ["box"], 1),
        ("sam_hf default: 8 prompts per image (box, point)", ["box", "point"], 8),
    ):
        live = SamTrainingCollator(processor, prompt_types=prompt_types, max_prompts=prompts)
        cached = SamTrainingCollator(
            processor, prompt_types=prompt_types, max_prompts=prompts, use_cached_embeddings=True
        )
        _steps_per_second(model, optimizer, cached, cached_examples, 2)  # warm-up
        cached_rate = _steps_per_second(model, optimizer, cached, cached_examples, args.cached_steps)
        live_rate = _steps_per_second(model, optimizer, live, examples, args.uncached_steps)
        target = " (target >= 20x)" if prompts == 1 else ""
        print(f"{label}")
        print(f"  cached embeddings : {cached_rate:.3f} steps/s ({args.cached_steps} steps)")
        print(f"  encode every step : {live_rate:.4f} steps/s ({args.uncached_steps} steps)")
        print(f"  ratio cached / encode-every-step: {cached_rate / live_rate:.1f}x{target}")


if __name__ == "__main__":
    main()

"""Cross-domain check of the shipped sam-hf-tiny: zero-shot vs a decoder LoRA adapter on the `cells` domain.

    python benchmarks/bench_cross_domain.py [--steps 150] [--train-images 64] [--test-images 50]

`sam-hf-tiny` was pretrained on the procedural `shapes` domain only. This fits a LoRA adapter (rank 8 on the
decoder's attention projections; encoder frozen, embeddings cached) on `cells` split "train" with the
package's fine-tuning loop (`sam_hf.training.finetune`, what `sam-hf finetune` runs), and measures 1-point /
3-point / box mIoU of the model with the adapter off and on, on `cells` split "test", with the project's
evaluation protocol (`sam_hf.evaluation.evaluate_model`), same prompts for both. Prints the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sam_hf.data.synthetic import synthetic_dataset, synthetic_samples
from sam_hf.evaluation import EvaluationProtocol, evaluate_model
from sam_hf.hub import load_pretrained
from sam_hf.pretrained import shipped_model_path
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.training.loop import FinetuneConfig, finetune


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

    path = shipped_model_path("sam-hf-tiny")
    processor = SamHFProcessor.from_pretrained(path)
    size = processor.image_size
    with tempfile.TemporaryDirectory() as work:
        train_dir = Path(work) / "cells-train"
        synthetic_dataset(args.train_images, "train", "cells", size).save_to_disk(str(train_dir))
        config = FinetuneConfig(
            model=str(path),
            dataset=str(train_dir),
            output_dir=str(Path(work) / "adapter"),
            mask_column="masks",
            prompt_types=["point", "box"],
            max_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lora_r=8,
            seed=args.seed,
            merge=False,
            cpu=True,
        )
        start = time.perf_counter()
        losses = finetune(config)["losses"]
        fit_s = time.perf_counter() - start
        model = load_pretrained(config.output_dir).eval()

    print(f"loss: first step {losses[0]:.4f}, last step {losses[-1]:.4f}")
    protocol = EvaluationProtocol(prompts=("point", "3point", "box"), seed=args.seed)
    test = [(s.image, s.masks) for s in synthetic_samples(args.test_images, "test", "cells", size)]
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

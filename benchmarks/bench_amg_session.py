"""Automatic mask generation as a user's script runs it: every generator in ONE process, one after the other.

`bench_amg.py` gives each run a fresh process; a script that loads the official generator and ours side by
side shares one allocator and one set of threads, which is what this measures. Same seeded random ViT-B
weights (segment_anything's registry, loaded strictly into ours), scikit-image's astronaut at 512x512,
`points_per_side` 16 by default, thresholds open (`pred_iou_thresh=0`, `stability_score_thresh=0`, so every
candidate is post-processed). Runs, in this order:

- official `segment_anything.SamAutomaticMaskGenerator` (float32);
- sam_hf float32, and `precision="bf16"`;
- sam_hf float32 with an unmerged LoRA adapter on the mask decoder (`sam_hf.training.lora.apply_lora`, rank 8,
  non-zero B), the model a fine-tuning run hands back.

Prints each time (the median of `--repeats` `generate()` calls after one warm-up; the official runs once
unless `--official-repeats` says otherwise) and the ratios official / ours and LoRA / plain. On a CPU without
native bf16 (AVX2 only) bf16 is emulated and slower than float32; `--precisions fp32` skips that run there.

    python benchmarks/bench_amg_session.py
    python benchmarks/bench_amg_session.py --points-per-side 32 --repeats 1
    python benchmarks/bench_amg_session.py --precisions fp32
"""

from __future__ import annotations

import argparse
import statistics
import time


def _median_seconds(generate, image, repeats: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = len(generate(image))
        times.append(time.perf_counter() - start)
    return statistics.median(times), count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed generate() calls of each sam_hf run")
    parser.add_argument("--official-repeats", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator
    from segment_anything import sam_model_registry
    from skimage import data

    from sam_hf import SamAutomaticMaskGenerator, SamHFConfig, SamHFModel
    from sam_hf.training.lora import apply_lora

    image = np.asarray(Image.fromarray(data.astronaut()).resize((512, 512)))
    settings = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    torch.manual_seed(0)
    official = sam_model_registry["vit_b"]().eval()
    model = SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
    model.load_state_dict(official.state_dict(), strict=True)
    print(f"ViT-B (seeded random weights), 512x512 astronaut, points_per_side={args.points_per_side}, "
          "thresholds open, one process", flush=True)  # fmt: skip

    results = {}
    official_generator = OfficialGenerator(official, **settings)
    results["official"] = _median_seconds(official_generator.generate, image, args.official_repeats)
    print(f"  official fp32      {results['official'][0]:7.2f} s  {results['official'][1]} masks", flush=True)
    del official_generator, official
    for precision in dict.fromkeys(["fp32", *args.precisions]):
        name = f"sam_hf {precision}"
        generator = SamAutomaticMaskGenerator(model, precision=precision, **settings)
        generator.generate(image)  # warm-up: first-call allocations and kernel choices
        results[name] = _median_seconds(generator.generate, image, args.repeats)
        print(f"  {name:<18} {results[name][0]:7.2f} s  {results[name][1]} masks", flush=True)
    adapted = apply_lora(model, r=8, init_lora_weights=False, verbose=False).eval()
    generator = SamAutomaticMaskGenerator(adapted, **settings)
    generator.generate(image)
    results["sam_hf fp32 + LoRA"] = _median_seconds(generator.generate, image, args.repeats)
    print(f"  sam_hf fp32 + LoRA {results['sam_hf fp32 + LoRA'][0]:7.2f} s  "
          f"{results['sam_hf fp32 + LoRA'][1]} masks", flush=True)  # fmt: skip

    reference = results["official"][0]
    for name in [f"sam_hf {precision}" for precision in dict.fromkeys(["fp32", *args.precisions])] + [
        "sam_hf fp32 + LoRA"
    ]:
        print(f"official / {name}: {reference / results[name][0]:.2f}x")
    print(f"LoRA / plain (fp32): {results['sam_hf fp32 + LoRA'][0] / results['sam_hf fp32'][0]:.2f}x")


if __name__ == "__main__":
    main()

"""Latency of a click in the labelling app: `LabelSession.add_click` vs the official `SamPredictor.predict`.

What the annotator waits for after each click once the image embedding is cached: the prompt encoder, the
mask decoder, upscaling the logits to the image and thresholding (the session also computes the stability
score of each candidate). Same seeded random ViT-B weights (segment_anything's registry, loaded strictly into
`SamHFModel`), same 1024x1024 photo (scikit-image's astronaut, resized), same click sequence: click 1 alone
(three candidates), then correction clicks with all earlier clicks and the previous low-resolution logits as
the mask prompt (one mask), as SAM's interactive setting and the session do. Both run in this process, one
after the other, on the same threads; the image is encoded once for each before timing.

Printed: median and 90th percentile milliseconds per click over `--clicks` clicks (after `--warmup` untimed
sequences), for each, and the ratio official / session.

    python benchmarks/bench_label_latency.py                 # ViT-B, 1024 px, 25 clicks
    python benchmarks/bench_label_latency.py --clicks 40
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=25, help="timed clicks (one sequence)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed sequences of 3 clicks first")
    parser.add_argument("--size", type=int, default=1024, help="side of the square image in pixels")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 on a shared machine",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.clicks < 2:
        parser.error(f"--clicks must be at least 2, got {args.clicks}")

    import numpy as np
    import torch
    from PIL import Image
    from segment_anything import SamPredictor as OfficialPredictor
    from segment_anything import sam_model_registry
    from skimage import data

    from sam_hf import SamHFConfig, SamHFModel, SamHFProcessor
    from sam_hf.labeling import LabelSession

    image = np.asarray(Image.fromarray(data.astronaut()).resize((args.size, args.size)))
    rng = np.random.default_rng(args.seed)
    points = rng.uniform(0, args.size - 1, size=(args.clicks, 2)).astype(np.float32)
    labels = (rng.random(args.clicks) < 0.7).astype(np.int64)
    labels[0] = 1
    torch.manual_seed(args.seed)
    official = sam_model_registry["vit_b"]().eval()
    model = SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
    model.load_state_dict(official.state_dict(), strict=True)
    print(
        f"ViT-B (seeded random weights), {args.size}x{args.size} astronaut, {args.clicks} clicks "
        f"(click 1 multimask, then mask prompt + all clicks), torch threads {torch.get_num_threads()}",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        Image.fromarray(image).save(folder / "astronaut.png")
        processor = SamHFProcessor.from_model_config(model.config)
        with LabelSession((model, processor), folder, Path(scratch) / "out", device="cpu") as session:

            def session_sequence(count: int) -> list[float]:
                session.clear_prompts()
                times = []
                for (x, y), label in zip(points[:count], labels[:count], strict=True):
                    start = time.perf_counter()
                    session.add_click(float(x), float(y), positive=bool(label))
                    times.append(time.perf_counter() - start)
                return times

            for _ in range(args.warmup):
                session_sequence(3)
            ours = session_sequence(args.clicks)

    predictor = OfficialPredictor(official)
    predictor.set_image(image)

    def official_sequence(count: int) -> list[float]:
        times, logits = [], None
        for k in range(1, count + 1):
            start = time.perf_counter()
            masks, scores, low_res = predictor.predict(
                point_coords=points[:k],
                point_labels=labels[:k],
                mask_input=None if logits is None else logits,
                multimask_output=k == 1,
            )
            logits = low_res[[int(np.argmax(scores))]]
            times.append(time.perf_counter() - start)
        return times

    for _ in range(args.warmup):
        official_sequence(3)
    theirs = official_sequence(args.clicks)

    def line(name: str, times: list[float]) -> float:
        ms = np.array(times) * 1000
        print(
            f"  {name:<34} median {np.median(ms):7.1f} ms   p90 {np.percentile(ms, 90):7.1f} ms   "
            f"click 1 {ms[0]:7.1f} ms"
        )
        return float(np.median(ms))

    median_ours = line("sam_hf LabelSession.add_click", ours)
    median_theirs = line("official SamPredictor.predict", theirs)
    print(f"official / sam_hf (median): {median_theirs / median_ours:.2f}x")


if __name__ == "__main__":
    main()

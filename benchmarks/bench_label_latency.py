"""Latency of a click in the labelling app: `LabelSession.add_click` vs the reference `SamPredictor.predict`,
and of an image switch: `LabelSession.go_to` vs the reference `SamPredictor.set_image`.

What the annotator waits for after each click once the image embedding is cached: the prompt encoder, the
mask decoder, upscaling the logits to the image and thresholding (the session also computes the stability
score of each candidate). `--variant` picks SAM ViT-B (`vit_b`, reference `segment_anything`) or MobileSAM
(`vit_t`, reference `mobile_sam`); same seeded random weights in both (the reference's registry, loaded
strictly into `SamHFModel`; see `_variants.py`), same 1024x1024 photo (scikit-image's astronaut, resized;
the image switch alternates with its coffee photo, encoding each), same click sequence: click 1 alone
(three candidates), then correction clicks with all earlier clicks and the previous low-resolution logits as
the mask prompt (one mask), as SAM's interactive setting and the session do. Both run in this process, one
after the other, on the same threads; the image is encoded once for each before timing.

Printed: the machine, median and 90th percentile milliseconds per click over `--clicks` clicks (after
`--warmup` untimed sequences), for each, the median of `--switches` image switches, and the ratios
official / session.

    python benchmarks/bench_label_latency.py                 # ViT-B, 1024 px, 25 clicks
    python benchmarks/bench_label_latency.py --variant vit_t --clicks 40
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _variants import VARIANTS, machine, reference_and_ours


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="vit_b", choices=list(VARIANTS))
    parser.add_argument("--clicks", type=int, default=25, help="timed clicks (one sequence)")
    parser.add_argument("--switches", type=int, default=4, help="timed image switches")
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
    from skimage import data

    from sam_hf import SamHFProcessor
    from sam_hf.labeling import LabelSession

    image = np.asarray(Image.fromarray(data.astronaut()).resize((args.size, args.size)))
    other = np.asarray(Image.fromarray(data.coffee()).resize((args.size, args.size)))
    rng = np.random.default_rng(args.seed)
    points = rng.uniform(0, args.size - 1, size=(args.clicks, 2)).astype(np.float32)
    labels = (rng.random(args.clicks) < 0.7).astype(np.int64)
    labels[0] = 1
    package, official, model = reference_and_ours(args.variant, args.seed)
    print(machine(), flush=True)
    print(
        f"{VARIANTS[args.variant][1]} (seeded random weights), {args.size}x{args.size} astronaut, "
        f"{args.clicks} clicks (click 1 multimask, then mask prompt + all clicks); official: "
        f"{package.__name__}",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        Image.fromarray(image).save(folder / "a_astronaut.png")
        Image.fromarray(other).save(folder / "b_coffee.png")
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

            def session_switches() -> list[float]:
                times = []
                for index in [1, 0] * args.switches:
                    start = time.perf_counter()
                    session.go_to(index)
                    times.append(time.perf_counter() - start)
                return times[-args.switches :]  # ends on the astronaut, where the clicks go

            our_switches = session_switches()
            for _ in range(args.warmup):
                session_sequence(3)
            ours = session_sequence(args.clicks)

    predictor = package.SamPredictor(official)
    their_switches = []
    for picture in [other, image] * args.switches:
        start = time.perf_counter()
        predictor.set_image(picture)
        their_switches.append(time.perf_counter() - start)
    their_switches = their_switches[-args.switches :]

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
    print(f"official / sam_hf click (median): {median_theirs / median_ours:.2f}x")
    switch_ours, switch_theirs = 1000 * np.median(our_switches), 1000 * np.median(their_switches)
    print(f"  {'sam_hf LabelSession.go_to':<34} median {switch_ours:7.1f} ms")
    print(f"  {'official SamPredictor.set_image':<34} median {switch_theirs:7.1f} ms")
    print(f"official / sam_hf image switch (median): {switch_theirs / switch_ours:.2f}x")
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()

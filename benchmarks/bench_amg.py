"""Automatic mask generation: official `segment_anything.SamAutomaticMaskGenerator` vs `sam_hf`.

Same seeded random ViT-B weights (loaded strictly into both), same 512x512 photo (scikit-image's astronaut),
official default settings except `pred_iou_thresh=0` and `stability_score_thresh=0`, so that every candidate
survives the filters (random weights would otherwise drop most of them and the run would measure little);
box NMS stays at its default 0.7. Two settings: `crop_n_layers=0` and `crop_n_layers=1`.

Each run happens in its own subprocess so that its peak resident memory (`ru_maxrss`) is its own; the
time is the `generate()` call, end to end (image encoder included). The ratio is official / ours from
the same invocation; the CPU may be shared, so compare ratios rather than absolute seconds.

    python benchmarks/bench_amg.py                      # full: 32x32 grid (the official run takes minutes)
    python benchmarks/bench_amg.py --points-per-side 8  # quick
    python benchmarks/bench_amg.py --precision bf16     # ours under bf16 autocast (not the parity path)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    official = sam_model_registry["vit_b"]().eval().to(args.device)
    kwargs = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "crop_n_layers": args.crop_n_layers,
    }
    if args.worker == "official":
        from segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(official, **kwargs)
    else:
        from sam_hf import SamAutomaticMaskGenerator, SamHFConfig, SamHFModel

        model = SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
        model.load_state_dict(official.state_dict(), strict=True)
        del official
        generator = SamAutomaticMaskGenerator(model.to(args.device), precision=args.precision, **kwargs)
    image = np.ascontiguousarray(_load_image(args.image))  # 512 x 512 x 3 by default
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    records = generator.generate(image)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "masks": len(records),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_generate_mib": baseline,
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def _load_image(path: str | None):
    import numpy as np

    if path is None:
        from skimage import data

        return data.astronaut()
    if path.endswith(".npy"):
        return np.load(path)
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _run(which: str, args: argparse.Namespace, crop_n_layers: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        which,
        "--points-per-side",
        str(args.points_per_side),
        "--crop-n-layers",
        str(crop_n_layers),
        "--precision",
        args.precision,
        "--device",
        args.device,
    ] + (["--image", args.image] if args.image else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--crop-n-layers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="ours only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", default=None, help="image file or .npy (default: skimage astronaut)")
    parser.add_argument("--worker", choices=("official", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.crop_n_layers = args.crop_n_layers[0]
        _worker(args)
        return
    print(
        f"ViT-B (seeded random weights), 512x512 astronaut, points_per_side={args.points_per_side}, "
        f"pred_iou_thresh=0, stability_score_thresh=0 (all candidates survive), box_nms_thresh=0.7, "
        f"device={args.device}, ours precision={args.precision}"
    )
    for layers in args.crop_n_layers:
        official = _run("official", args, layers)
        ours = _run("ours", args, layers)
        print(
            f"crop_n_layers={layers}: official {official['seconds']:.1f} s, {official['masks']} masks, "
            f"peak RSS {official['peak_rss_mib']:.0f} MiB | ours {ours['seconds']:.1f} s, {ours['masks']} masks, "
            f"peak RSS {ours['peak_rss_mib']:.0f} MiB | speed-up {official['seconds'] / ours['seconds']:.2f}x"
            + (
                f" | peak CUDA official {official['peak_cuda_mib']:.0f} MiB, ours {ours['peak_cuda_mib']:.0f} MiB"
                if "peak_cuda_mib" in ours
                else ""
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

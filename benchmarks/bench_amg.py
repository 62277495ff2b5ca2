"""Automatic mask generation: official `segment_anything.SamAutomaticMaskGenerator` vs `sam_hf`.

Same seeded random ViT-B weights (built by segment_anything's registry, loaded strictly into ours), same
512x512 photo (scikit-image's astronaut), official defaults otherwise. Threshold modes:

- `open`: `pred_iou_thresh=0`, `stability_score_thresh=0`, so no candidate is dropped before box NMS: both
  implementations upsample, score, box and run-length encode every candidate (points x 3 per crop), the
  full work of a generator whose candidates all pass (random weights would otherwise drop most of them
  and the run would measure little). Box NMS stays at `--box-nms-thresh` (default 0.7, the official default).
- `default`: the official thresholds (0.88 / 0.95); ours filters at low resolution, so it skips most work.

Every (implementation, precision, crop_n_layers, mode) runs in its own subprocess, one after the other, so
timings do not overlap and the peak resident memory is its own: VmHWM is reset (`/proc/self/clear_refs`)
just before `generate()` and read after it, so it is the peak while generating (weights included),
not model construction. Times: `generate()` end to end, of which the image encoder (official
`predictor.set_image`, ours `model.get_image_embeddings`); the rest is decoder + post-processing, so the
ratio can be read with either encoder. Ratios are official / ours from the same invocation.

Ours asks glibc, in its own process, to reuse freed blocks (see `automatic_mask_generator`); the official
runs with the allocator's defaults. `--box-nms-thresh 1.0` keeps every candidate in the output, so the
agreement covers all of them (the official's output conversion then takes minutes more).

Agreement: ours' masks are matched one-to-one to the official ones (greedy by mask IoU); printed are the
fraction of official masks matched at IoU >= 0.9 and the mean IoU of the matched pairs (fp32 is the
parity path; bf16 shows what the speed costs).

    python benchmarks/bench_amg.py                                   # everything (the official takes minutes)
    python benchmarks/bench_amg.py --crop-n-layers 0 --modes open    # one setting
    python benchmarks/bench_amg.py --points-per-side 8               # quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPEN = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _peak_reset() -> bool:
    """Reset the process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(function, totals: dict, key: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = function(*args, **kwargs)
        totals[key] = totals.get(key, 0.0) + time.perf_counter() - start
        return out

    return wrapper


def _worker(args: argparse.Namespace) -> None:
    import gc

    import numpy as np
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    official = sam_model_registry["vit_b"]().eval().to(args.device)
    kwargs = {"points_per_side": args.points_per_side, "crop_n_layers": args.crop_n_layers}
    kwargs["box_nms_thresh"] = args.box_nms_thresh
    if args.mode == "open":
        kwargs.update(OPEN)
    totals: dict[str, float] = {}
    if args.worker == "official":
        from segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(official, **kwargs)
        generator.predictor.set_image = _timed(generator.predictor.set_image, totals, "encoder")
    else:
        from sam_hf import SamAutomaticMaskGenerator, SamHFConfig, SamHFModel

        model = SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
        model.load_state_dict(official.state_dict(), strict=True)
        del official
        gc.collect()
        generator = SamAutomaticMaskGenerator(model.to(args.device), precision=args.precision, **kwargs)
        model.get_image_embeddings = _timed(model.get_image_embeddings, totals, "encoder")
    image = np.ascontiguousarray(_load_image(args.image))
    reset = _peak_reset()
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
        "encoder_seconds": totals.get("encoder", 0.0),
        "masks": len(records),
        "peak_rss_mib": _peak_mib(),
        "peak_is_generate_only": reset,
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    masks = (
        np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
    )
    flat = masks.reshape(len(masks), image.shape[0] * image.shape[1])
    points = np.array([r["point_coords"][0] for r in records], dtype=np.float64).reshape(-1, 2)
    np.savez_compressed(args.out, masks=np.packbits(flat, axis=1), shape=masks.shape, points=points)
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


def _load_masks(path: Path):
    import numpy as np

    data = np.load(path)
    count, pixels = int(data["shape"][0]), int(np.prod(data["shape"][1:]))
    return np.unpackbits(data["masks"], axis=1, count=pixels).reshape(count, pixels)


def _agreement(reference_path: Path, ours_path: Path) -> str:
    """Match each official mask to ours one-to-one (greedy by mask IoU) and summarise the IoUs.

    Few masks: among all of ours. Many (the IoU matrix would be too big): among ours from the same point
    prompt (the 3 multimask outputs of that point), which is where its counterpart comes from.
    """
    import numpy as np

    ref, ours = _load_masks(reference_path), _load_masks(ours_path)
    if len(ref) == 0 or len(ours) == 0:
        return f"agreement n/a ({len(ref)} vs {len(ours)} masks)"
    if len(ref) * len(ours) <= 10_000:
        groups = [(np.arange(len(ref)), np.arange(len(ours)))]
    else:
        ref_points = np.round(np.load(reference_path)["points"], 3)
        our_points = np.round(np.load(ours_path)["points"], 3)
        groups = [
            (np.flatnonzero((ref_points == key).all(1)), np.flatnonzero((our_points == key).all(1)))
            for key in np.unique(ref_points, axis=0)
        ]
    matched = []
    for ref_idx, our_idx in groups:
        if len(our_idx) == 0:
            continue
        a, b = ref[ref_idx].astype(np.float32), ours[our_idx].astype(np.float32)
        inter = a @ b.T
        iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1)
        used_ref, used_ours = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = divmod(int(flat), iou.shape[1])
            if i not in used_ref and j not in used_ours:
                used_ref.add(i)
                used_ours.add(j)
                matched.append(iou[i, j])
    matched = np.array(matched)
    return (
        f"{len(ref)} vs {len(ours)} masks: {np.sum(matched >= 0.9) / len(ref):.1%} of official masks matched "
        f"at IoU>=0.9 ({np.sum(matched >= 0.99) / len(ref):.1%} at >=0.99), mean matched IoU "
        f"{matched.mean() if len(matched) else 0.0:.4f}"
    )


def _run(which: str, args: argparse.Namespace, layers: int, mode: str, precision: str, out: Path) -> dict:
    command = [sys.executable, __file__, "--worker", which, "--out", str(out)]
    command += ["--points-per-side", str(args.points_per_side), "--crop-n-layers", str(layers)]
    command += ["--modes", mode, "--precisions", precision, "--device", args.device]
    command += ["--box-nms-thresh", str(args.box_nms_thresh)] + (
        ["--image", args.image] if args.image else []
    )
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # reported, not raised: the official generator crashes on some inputs
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _describe(name: str, r: dict) -> str:
    if "error" in r:
        return f"  {name:<12} failed: {r['error']}"
    line = (
        f"  {name:<12} {r['seconds']:7.1f} s (encoder {r['encoder_seconds']:5.1f} s, decoder + post "
        f"{r['seconds'] - r['encoder_seconds']:6.1f} s)  {r['masks']:4d} masks  peak RSS {r['peak_rss_mib']:6.0f} MiB"
    )
    return line + (f"  peak CUDA {r['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in r else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--crop-n-layers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--modes", nargs="+", default=["open", "default"], choices=("open", "default"))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", default=None, help="image file or .npy (default: skimage astronaut)")
    parser.add_argument("--worker", choices=("official", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.crop_n_layers, args.mode, args.precision = (
            args.crop_n_layers[0],
            args.modes[0],
            args.precisions[0],
        )
        _worker(args)
        return
    print(
        f"ViT-B (seeded random weights), 512x512 astronaut, points_per_side={args.points_per_side}, "
        f"box_nms_thresh={args.box_nms_thresh}, device={args.device}; mode open = pred_iou_thresh=0 and "
        "stability_score_thresh=0: every candidate is upsampled, scored, boxed and RLE-encoded before box NMS",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for layers in args.crop_n_layers:
            from segment_anything.utils.amg import generate_crop_boxes

            crops = (
                len(generate_crop_boxes((512, 512), layers, 512 / 1500)[0]) if args.image is None else None
            )
            for mode in args.modes:
                candidates = f"{crops * args.points_per_side**2 * 3} candidates" if crops else ""
                print(f"crop_n_layers={layers}, thresholds {mode} ({candidates}):", flush=True)
                official_out = Path(tmp, f"official-{layers}-{mode}.npz")
                official = _run("official", args, layers, mode, "fp32", official_out)
                print(_describe("official", official), flush=True)
                for precision in args.precisions:
                    ours_out = Path(tmp, f"ours-{layers}-{mode}-{precision}.npz")
                    ours = _run("ours", args, layers, mode, precision, ours_out)
                    print(_describe(f"ours {precision}", ours), flush=True)
                    if "error" in official or "error" in ours:
                        continue
                    decode = (official["seconds"] - official["encoder_seconds"]) / max(
                        ours["seconds"] - ours["encoder_seconds"], 1e-9
                    )
                    print(
                        f"    speed-up end to end {official['seconds'] / ours['seconds']:.2f}x, decoder + post "
                        f"{decode:.2f}x, peak RSS ratio ours/official "
                        f"{ours['peak_rss_mib'] / official['peak_rss_mib']:.2f}; "
                        + _agreement(official_out, ours_out),
                        flush=True,
                    )


if __name__ == "__main__":
    main()

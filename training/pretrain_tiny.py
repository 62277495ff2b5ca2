"""Pretrain the small SAM shipped as `sam-hf-tiny` (`sam_hf.training.pretrain` describes the recipe).

    python training/pretrain_tiny.py --config training/configs/pretrain_tiny_cpu.yaml --out runs/tiny

Rerunning the same command resumes from `<out>/checkpoint.pt`; at the end the model is in `<out>/model` and
`training/ship_tiny.py --run <out>` makes it the package's `sam-hf-tiny`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from sam_hf.training.pretrain import load_recipe, pretrain


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
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    recipe = load_recipe(args.config, overrides)
    saved = pretrain(recipe, args.out, args.device, args.num_workers, args.max_steps)
    print(f"saved {saved}" if saved else f"stopped before step {recipe['steps']}; rerun to resume")


if __name__ == "__main__":
    main()

"""Fine-tune SAM's mask decoder (LoRA by default) with accelerate: the job `sam-hf finetune` runs.

    accelerate launch training/finetune.py --config training/configs/lora_decoder.yaml
    accelerate launch training/finetune.py --config training/configs/lora_decoder.yaml --resume-from-checkpoint latest

Several processes: `accelerate launch --multi_gpu --num_machines 1 --num_processes N training/finetune.py ...`
(with no GPU visible the N processes train together on CPU; in accelerate 1.15 `--cpu --num_processes N`
starts a single process).

Writes the adapter, `merged/`, `train_log.jsonl`, `training_summary.json`, `eval_results.json` (when the
dataset has an eval split) and the model card to `output_dir`; see `sam_hf.training.job`.
Any config field can be overridden as `--set field=value` (YAML syntax for the value).
"""

import argparse
import sys

import yaml

from sam_hf.hub import HubPushError
from sam_hf.training.job import run_finetune
from sam_hf.training.loop import FinetuneConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML file with FinetuneConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    parser.add_argument("--resume-from-checkpoint", default=None, help="a step-<n> folder or 'latest'")
    parser.add_argument(
        "--max-steps-this-run", type=int, default=None, help="stop early (simulated interruption)"
    )
    args = parser.parse_args()
    with open(args.config) as f:
        fields = yaml.safe_load(f)
    for override in args.set:
        name, _, value = override.partition("=")
        fields[name] = yaml.safe_load(value)
    try:
        summary = run_finetune(FinetuneConfig(**fields), args.resume_from_checkpoint, args.max_steps_this_run)
    except HubPushError as error:  # the trained output stays on disk; the message says how to retry
        sys.exit(f"training/finetune.py: {error}")
    print({key: summary[key] for key in ("steps", "num_processes", "output_dir") if key in summary})


if __name__ == "__main__":
    main()

"""Ship a `pretrain_tiny.py` run as the package's `sam-hf-tiny`: weights, run record, evaluation, model card.

    python training/ship_tiny.py --run RUN          # after `pretrain_tiny.py --out RUN` has finished
    python training/ship_tiny.py --card-only        # re-render the card from the committed records
    python training/ship_tiny.py --source-only      # refresh the source files and auto_map from the package

The shipped weights went through the training stages `STAGES` in order (each a run of `pretrain_tiny.py`, a
later one starting from the model of the one before with `init_from`); `--stages` names them, record file
prefixes in `training/runs/`, the last being the run given to `--run`. With `--run`: the run's model
(weights, config) and a processor config for its input size go to `src/sam_hf/pretrained/sam-hf-tiny/`;
`RUN/recipe.json` and `RUN/train_log.jsonl` to `training/runs/<last stage>_recipe.json` / `_train_log.jsonl`;
the shipped model is measured with `sam-hf evaluate --prompt point,3point,box` on `--num-images` held-out
images of each of `EVAL_DATA`, and with `--prompt clicks` (up to `MAX_CLICKS`) on `--num-click-images` of each
of `CLICK_DATA`, into `training/runs/<last stage>_eval.json`. Then (and with `--card-only`) the template
`sam_hf/model_cards/sam_hf_tiny.md` is rendered from the stages' records into the model folder's README.md:
every number in the card is one the records hold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import load_file

from sam_hf import SamHFModel
from sam_hf.cli import main as sam_hf_cli
from sam_hf.data.synthetic import synthetic_dataset
from sam_hf.hub import CARD_MARKER, card_template_path, load_model, save_model
from sam_hf.pretrained import shipped_model_path
from sam_hf.processing_sam_hf import PROCESSOR_CONFIG_NAME
from sam_hf.remote_code import remote_code_files

_ROOT = Path(__file__).resolve().parent
RECORDS = _ROOT / "runs"
# Record prefixes of the training stages of the shipped weights, in order: stage 1 trains the whole model with
# up to 4 points per prompt; stage 2 (from stage 1's model, encoder frozen) teaches long click sequences.
STAGES = ("pretrain_tiny_cpu", "pretrain_tiny_clicks_cpu")
PROMPTS = ("point", "3point", "box")
# (domain, image side, card label) of the held-out evaluation sets, split "test".
EVAL_DATA = (
    ("shapes", 128, "`shapes`, 128 px (training domain, held out)"),
    ("shapes", 192, "`shapes`, 192 px"),
    ("cells", 128, "`cells`, 128 px (a domain it was not trained on)"),
    ("cells", 192, "`cells`, 192 px"),
)
# (domain, image side) of the interactive evaluation (`clicks`, up to MAX_CLICKS per object), split "test".
CLICK_DATA = (("shapes", 128), ("cells", 128))
MAX_CLICKS = 20
CLICK_COLUMNS = (1, 5, 10, 20)  # clicks whose mIoU the card shows
TARGETS = {"box": 0.85, "point": 0.70}  # issue 5's accuracy targets, quoted in the card


def ship_weights(run: Path, model_dir: Path) -> None:
    """`run/model` (a `save_pretrained` folder) -> `model_dir`: weights and config as the run wrote them, then the
    source and processor (`ship_source`)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model" / "model.safetensors", model_dir / "model.safetensors")
    config = json.loads((run / "model" / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    ship_source(model_dir)


def ship_source(model_dir: Path) -> None:
    """Write the package's current modeling, processor and pipeline source into `model_dir`, with the `auto_map`
    and `custom_pipelines` of `config.json` and the processor config (`sam_hf.hub.save_model`), so a copy of the
    folder loads with `trust_remote_code=True` (Auto classes and `pipeline("mask-generation")`) where sam_hf is
    not installed. Weights and the rest of the config stay as they are.
    """
    model, processor, _ = load_model(model_dir, verbose=False)
    with tempfile.TemporaryDirectory() as saved:
        save_model(model, saved, processor)
        for path in remote_code_files(saved):
            shutil.copyfile(path, model_dir / path.name)
        shutil.copyfile(Path(saved) / PROCESSOR_CONFIG_NAME, model_dir / PROCESSOR_CONFIG_NAME)
        written = json.loads((Path(saved) / "config.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    remote_code = {key: written[key] for key in ("auto_map", "custom_pipelines")}
    (model_dir / "config.json").write_text(
        json.dumps({**config, **remote_code}, indent=2, sort_keys=True) + "\n"
    )


def copy_record(run: Path, records: Path, name: str) -> None:
    records.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "recipe.json", records / f"{name}_recipe.json")
    shutil.copyfile(run / "train_log.jsonl", records / f"{name}_train_log.jsonl")


def evaluate(
    model_dir: Path, records: Path, name: str, num_images: int = 100, num_click_images: int = 20
) -> dict:
    """`sam-hf evaluate` of `model_dir` on each of `EVAL_DATA` (`PROMPTS`) and `CLICK_DATA` (`clicks`), into
    `<records>/<name>_eval.json`.

    The file is rewritten after each set, with the SHA-256 of the weights measured; a rerun on the same weights
    keeps the sets already measured with the same number of images, so an interrupted evaluation resumes.

    Returns `{"weights_sha256", "<domain><side>": {"protocol", "num_images", <prompt>: {"num_objects",
    "mean_iou", ...}}, "clicks": {"<domain><side>": {"protocol", "num_images", "num_objects",
    "miou_per_click", "noc@85", "noc@90"}}}`.
    """
    path = records / f"{name}_eval.json"
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    previous = json.loads(path.read_text()) if path.exists() else {}
    kept = previous if previous.get("weights_sha256") == digest else {}
    results: dict = {
        "weights_sha256": digest,
        "clicks": {
            key: entry
            for key, entry in kept.get("clicks", {}).items()
            if entry["num_images"] == num_click_images
        },
        **{
            key: entry
            for key, entry in kept.items()
            if key not in ("weights_sha256", "clicks") and entry["num_images"] == num_images
        },
    }

    def measure(domain: str, side: int, count: int, *options: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            data, output = Path(tmp) / "data", Path(tmp) / "results.json"
            synthetic_dataset(count, "test", domain, side).save_to_disk(data)
            arguments = ["--model", str(model_dir), "--dataset", str(data), "--output", str(output)]
            sam_hf_cli(["evaluate", *arguments, *options, "--device", "cpu"])
            return json.loads(output.read_text())

    for domain, side, _ in EVAL_DATA:
        key = f"{domain}{side}"
        if key in results:
            continue
        measured = measure(domain, side, num_images, "--prompt", ",".join(PROMPTS))
        run = measured["runs"]["model"]["results"]
        results[key] = {
            "protocol": measured["protocol"]["name"],
            "num_images": measured["num_images"],
            **{prompt: run[prompt] for prompt in PROMPTS},
        }
        path.write_text(json.dumps(results, indent=1) + "\n")
    for domain, side in CLICK_DATA:
        key = f"{domain}{side}"
        if key in results["clicks"]:
            continue
        options = ("--prompt", "clicks", "--max-clicks", str(MAX_CLICKS))
        measured = measure(domain, side, num_click_images, *options)
        clicks = measured["runs"]["model"]["results"]["clicks"]
        results["clicks"][key] = {
            "protocol": measured["protocol"]["name"],
            "num_images": measured["num_images"],
            **{field: clicks[field] for field in ("num_objects", "miou_per_click", "noc@85", "noc@90")},
        }
        path.write_text(json.dumps(results, indent=1) + "\n")
    path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def _stage(records: Path, name: str) -> dict:
    """The card's view of one training stage from its record files."""
    run = json.loads((records / f"{name}_recipe.json").read_text())
    log = [json.loads(line) for line in (records / f"{name}_train_log.jsonl").read_text().splitlines()]
    steps = [entry["step"] for entry in log]
    seconds = run["train_time_s"]
    device = run["device"]
    return {
        "recipe": run["recipe"],
        "recipe_file": f"training/configs/{name}.yaml",
        "device_text": "a CPU (the project's 2-core machine)" if device == "cpu" else device,
        "train_time_text": f"{seconds:.0f} s ({seconds / 60:.0f} minutes)",
        "torch_version": run["torch"],
        "resumed_steps": sorted({step for i, step in enumerate(steps) if step in steps[:i]}),
        "records": [f"{name}_{suffix}" for suffix in ("recipe.json", "train_log.jsonl")],
    }


def render_card(model_dir: Path, records: Path, stages: tuple[str, ...] = STAGES) -> str:
    """The card text of the model in `model_dir`, from the template and the record files of its training
    `stages` (the last holds the evaluation of the shipped weights)."""
    config = SamHFModel.config_class.from_pretrained(model_dir)
    evaluation = json.loads((records / f"{stages[-1]}_eval.json").read_text())
    weights = model_dir / "model.safetensors"
    num_parameters = sum(tensor.numel() for tensor in load_file(weights).values())
    card = ModelCard.from_template(
        ModelCardData(
            library_name="sam_hf",
            license="apache-2.0",
            pipeline_tag="mask-generation",
            tags=["sam_hf", "segment-anything", "synthetic-data"],
        ),
        template_path=str(card_template_path("sam_hf_tiny")),
        marker=CARD_MARKER,
        model_name=model_dir.name,
        num_parameters_text=f"{num_parameters / 1e6:.2f} M",
        weights_size_text=f"{weights.stat().st_size / 1e6:.1f} MB",
        vision=config.vision_config.to_dict(),
        decoder_hidden_size=config.mask_decoder_config.hidden_size,
        mask_size=config.mask_size,
        stages=[_stage(records, name) for name in stages],
        eval_file=f"{stages[-1]}_eval.json",
        eval_rows=[
            {
                "label": label,
                "num_images": evaluation[f"{domain}{side}"]["num_images"],
                "objects": evaluation[f"{domain}{side}"]["box"]["num_objects"],
                **{prompt: evaluation[f"{domain}{side}"][prompt]["mean_iou"] for prompt in PROMPTS},
            }
            for domain, side, label in EVAL_DATA
        ],
        click_columns=CLICK_COLUMNS,
        click_rows=[
            {"label": f"`{domain}`, {side} px", **evaluation["clicks"][f"{domain}{side}"]}
            for domain, side in CLICK_DATA
        ],
        targets=TARGETS,
    )
    return str(card)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="finished pretrain_tiny.py run folder (the last stage)")
    source.add_argument("--card-only", action="store_true", help="only re-render the card from the records")
    source.add_argument(
        "--source-only",
        action="store_true",
        help="only refresh the modeling and processor source and auto_map",
    )
    parser.add_argument("--model-dir", type=Path, default=shipped_model_path("sam-hf-tiny"))
    parser.add_argument("--records", type=Path, default=RECORDS, help="folder of the run records")
    parser.add_argument(
        "--stages",
        nargs="+",
        default=list(STAGES),
        help="record file prefixes (the recipes' file names) of the training stages, in order; the last is --run",
    )
    parser.add_argument("--num-images", type=int, default=100, help="held-out images per evaluation set")
    parser.add_argument(
        "--num-click-images", type=int, default=20, help="held-out images per interactive (clicks) set"
    )
    args = parser.parse_args(argv)
    stages = tuple(args.stages)
    if args.run is not None:
        if not (args.run / "recipe.json").exists():
            raise ValueError(
                f"--run must be a finished pretrain_tiny.py run (with recipe.json), got {args.run}"
            )
        ship_weights(args.run, args.model_dir)
        copy_record(args.run, args.records, stages[-1])
        evaluate(args.model_dir, args.records, stages[-1], args.num_images, args.num_click_images)
    if args.source_only:
        ship_source(args.model_dir)
        print(f"wrote the source and auto_map into {args.model_dir}")
        return
    (args.model_dir / "README.md").write_text(render_card(args.model_dir, args.records, stages))
    print(f"wrote {args.model_dir / 'README.md'}")


if __name__ == "__main__":
    main()

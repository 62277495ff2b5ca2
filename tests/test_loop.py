"""The data-engine loop as a user runs it, through the `sam-hf` command line on real photos:

annotate (two processes, `accelerate launch`) -> finetune (from a Meta `.pth` base, and from a folder) ->
evaluate -> segment / generate / annotate with the finetune output folder -> push.

Each stage is fed what the stage before it wrote, and checks it: masks align with the images as `datasets`
decodes them (a phone JPEG with an EXIF orientation and a 16-bit PNG among them), the adapter names its base
and changes predictions, evaluate reports base and fine-tuned side by side, the pushed commit holds the
adapter, the card and the processor config.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import console_script

pytestmark = pytest.mark.slow

_SIDE = 160  # pixels: photos are shrunk so the loop stays quick on a CPU
# Thresholds open enough for the shipped tiny model to keep masks on photos it was never trained on.
_AMG = ["--points-per-side", "6", "--pred-iou-thresh", "0.3", "--stability-score-thresh", "0.5"]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _sam_hf(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "sam_hf.cli", *args, env=env)


def _write_photos(folder: Path) -> dict[str, np.ndarray]:
    """Six scikit-image photos, a phone-style JPEG stored sideways with EXIF Orientation 6, a 16-bit PNG.

    Returns each file's pixels as a viewer shows them (the EXIF rotation applied)."""
    from skimage import data

    folder.mkdir()
    shown = {}
    for name in ("astronaut", "chelsea", "coffee", "camera", "rocket", "coins"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((_SIDE, _SIDE))
        image.save(folder / f"{name}.png")
        shown[f"{name}.png"] = np.asarray(image)
    upright = Image.fromarray(data.astronaut()).resize((120, _SIDE))  # portrait, as the phone showed it
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates the stored pixels 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_270).save(folder / "phone.jpg", quality=95, exif=exif)
    with Image.open(folder / "phone.jpg") as stored:
        from PIL import ImageOps

        shown["phone.jpg"] = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    gray16 = (data.camera()[::4, ::4].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "microscope16.png")
    shown["microscope16.png"] = gray16
    return shown


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """Runs the whole loop once; the tests below check each stage's output."""
    sam_hf_script = console_script("sam-hf")
    if sam_hf_script is None:
        pytest.skip("the sam-hf console script is not installed")
    root = tmp_path_factory.mktemp("loop")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "CUDA_VISIBLE_DEVICES": ""}
    env["HF_HUB_OFFLINE"] = "1"
    shown = _write_photos(root / "photos")
    stages = {"root": root, "shown": shown, "env": env}

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
    launch += ["--num_processes", "2", "--no_python", sam_hf_script]
    stages["annotate"] = _run(
        *launch, "annotate", str(root / "photos"), "--model", "sam-hf-tiny", "--out", str(root / "dataset"),
        *_AMG, env=env,
    )  # fmt: skip

    _sam_hf("convert", "sam-hf-tiny", str(root / "base.pth"), "--to", "meta", env=env)
    _sam_hf("convert", "sam-hf-tiny", str(root / "base_folder"), "--to", "sam_hf", env=env)
    train = [
        "--dataset",
        str(root / "dataset"),
        "--lora-r",
        "4",
        "--max-steps",
        "4",
        "--learning-rate",
        "0.02",
    ]
    train += ["--batch-size", "2", "--eval-prompt", "point,box"]
    stages["finetune_pth"] = _sam_hf(
        "finetune", "--model", str(root / "base.pth"), *train, "--output-dir", str(root / "ft_pth"), env=env
    )
    stages["finetune_folder"] = _sam_hf(
        "finetune", "--model", str(root / "base_folder"), *train, "--output-dir", str(root / "ft_folder"),
        env=env,
    )  # fmt: skip
    stages["evaluate"] = _sam_hf(
        "evaluate", "--model", str(root / "ft_pth"), "--dataset", str(root / "dataset"), "--prompt", "point,box",
        "--output", str(root / "eval.json"), env=env,
    )  # fmt: skip
    return stages


def test_the_sam_hf_script_is_found_beside_the_interpreter_without_path(monkeypatch):
    """A venv's python run without activating the venv: its console scripts are not on PATH."""
    monkeypatch.setenv("PATH", "")
    script = console_script("sam-hf")
    assert script is not None and Path(script).parent == Path(sys.executable).parent
    assert "segment" in _run(script, "--help", env=dict(os.environ)).stdout


def test_annotate_masks_align_with_the_images_datasets_decodes(loop):
    from datasets import load_from_disk

    from sam_hf.data.rle import rle_to_mask

    dataset = load_from_disk(str(loop["root"] / "dataset"))
    rows = [row for split in dataset.values() for row in split]
    assert sorted(row["file_name"] for row in rows) == sorted(loop["shown"])
    assert set(dataset) == {"train", "test"}
    for row in rows:
        decoded = np.asarray(row["image"])
        expected = loop["shown"][row["file_name"]]
        assert decoded.shape[:2] == expected.shape[:2], row["file_name"]
        for rle in row["masks"]:
            assert rle_to_mask(rle).shape == decoded.shape[:2], row["file_name"]
    phone = next(row for row in rows if row["file_name"] == "phone.jpg")
    assert np.asarray(phone["image"]).shape[:2] == (_SIDE, 120)  # upright, as the phone showed it
    assert sum(len(row["masks"]) for row in rows) > 0
    # Two ranks of one world each annotated their shard.
    assert re.search(r"\[0/2\]", loop["annotate"].stderr) and re.search(r"\[1/2\]", loop["annotate"].stderr)


def test_annotate_masks_follow_the_exif_orientation(loop):
    """The phone photo's masks are the generator's masks on the upright pixels `datasets` decodes."""
    from datasets import load_from_disk

    from sam_hf import SamAutomaticMaskGenerator, SamHFModel
    from sam_hf.data.rle import rle_to_mask

    dataset = load_from_disk(str(loop["root"] / "dataset"))
    phone = next(row for split in dataset.values() for row in split if row["file_name"] == "phone.jpg")
    generator = SamAutomaticMaskGenerator(
        SamHFModel.from_pretrained("sam-hf-tiny"), points_per_side=6, pred_iou_thresh=0.3,
        stability_score_thresh=0.5,
    )  # fmt: skip
    expected = generator.generate(np.asarray(phone["image"].convert("RGB")))
    stored = [rle_to_mask(rle) for rle in phone["masks"]]
    assert len(stored) == len(expected) > 0
    for mask in stored:
        best = max(
            (mask & r["segmentation"]).sum() / max((mask | r["segmentation"]).sum(), 1) for r in expected
        )
        assert best > 0.98


def test_finetune_from_a_meta_pth_names_its_base_and_changes_predictions(loop):
    root = loop["root"]
    for name in ("ft_pth", "ft_folder"):
        adapter = json.loads((root / name / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"], name
        assert (root / name / "training_summary.json").is_file(), name
        assert (root / name / "preprocessor_config.json").is_file(), name
        runs = json.loads((root / name / "eval_results.json").read_text())["runs"]
        assert set(runs) == {"base", "finetuned"}, name
        base, tuned = (
            runs["base"]["results"]["box"]["mean_iou"],
            runs["finetuned"]["results"]["box"]["mean_iou"],
        )
        assert base != tuned, name  # the adapter changes predictions
    assert Path(
        json.loads((root / "ft_pth" / "adapter_config.json").read_text())["base_model_name_or_path"]
    ).samefile(root / "base.pth")


def test_evaluate_reports_base_and_finetuned_side_by_side(loop):
    results = json.loads((loop["root"] / "eval.json").read_text())
    assert set(results["runs"]) == {"base", "finetuned"}
    header = next(line for line in loop["evaluate"].stdout.splitlines() if line.startswith("prompt"))
    assert "base" in header and "finetuned" in header


def test_commands_take_the_finetune_output_folder(loop):
    root, env = loop["root"], loop["env"]
    photo = root / "photos" / "phone.jpg"
    outputs = {}
    for model in ("base_folder", "ft_pth"):
        _sam_hf("segment", str(photo), "--model", str(root / model), "--point", "60,80", "--out",
                str(root / f"seg_{model}"), env=env)  # fmt: skip
        outputs[model] = json.loads((root / f"seg_{model}" / "scores.json").read_text())
    assert outputs["ft_pth"]["scores"] != outputs["base_folder"]["scores"]  # the adapter is applied
    _sam_hf(
        "generate", str(photo), "--model", str(root / "ft_pth"), "--out", str(root / "gen"), *_AMG, env=env
    )
    assert (root / "gen" / "masks.json").is_file()
    _sam_hf("annotate", str(root / "photos"), "--model", str(root / "ft_pth"), "--out", str(root / "dataset2"),
            *_AMG, env=env)  # fmt: skip
    from datasets import load_from_disk

    assert sum(len(split) for split in load_from_disk(str(root / "dataset2")).values()) == len(loop["shown"])


def test_push_dry_run_holds_adapter_card_and_processor(loop):
    result = _sam_hf("push", str(loop["root"] / "ft_pth"), "--repo-id", "someone/sam-hf-loop", "--dry-run",
                     env=loop["env"])  # fmt: skip
    listed = result.stdout
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "preprocessor_config.json"):
        assert name in listed
    assert (
        "base model" in result.stderr.lower()
    )  # a local base must travel with the adapter: said at push time

"""`sam-hf` command line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from sam_hf.cli import main


@pytest.fixture
def tiny_model_dir(tiny_model, tmp_path):
    path = tmp_path / "tiny"
    tiny_model.save_pretrained(path)
    return path


@pytest.fixture
def image_file(photos, tmp_path):
    path = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(path)  # (300, 451)
    return path


def test_segment_writes_masks_overlay_and_scores(tiny_model_dir, image_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "segment",
        str(image_file),
        "--model",
        str(tiny_model_dir),
        "--point",
        "120,80",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["multimask_output"] is True  # a single point: three candidate masks
    assert len(report["scores"]) == 3 and all(isinstance(s, float) for s in report["scores"])
    assert report["masks"] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    assert report["best"] == int(np.argmax(report["scores"]))
    assert report["points"] == [{"x": 120.0, "y": 80.0, "label": 1}]
    for name in report["masks"]:
        mask = Image.open(out / name)
        assert mask.mode == "L" and mask.size == (451, 300)
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    overlay = Image.open(out / "overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (451, 300)
    assert np.asarray(overlay)[80, 120].tolist() == [0, 200, 0]  # the foreground point is drawn
    assert "best mask" in capsys.readouterr().out


def test_segment_with_box_and_points_gives_one_mask(tiny_model_dir, image_file, tmp_path):
    out = tmp_path / "out"
    argv = [
        "segment", str(image_file), "--model", str(tiny_model_dir), "--out", str(out),
        "--point", "120,80", "--point", "200,90:0", "--box", "50,40,300,250",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["multimask_output"] is False and report["masks"] == ["mask_0.png"]
    assert report["box"] == [50.0, 40.0, 300.0, 250.0]
    assert [p["label"] for p in report["points"]] == [1, 0]
    assert main(argv + ["--multimask"]) == 0
    assert len(json.loads((out / "scores.json").read_text())["scores"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--point", "120"], "--point expects X,Y or X,Y:LABEL"),
        (["--point", "a,b"], "--point expects X,Y or X,Y:LABEL"),
        (["--point", "1,2:5"], "--point label must be 1 .* or 0"),
        (["--box", "1,2,3"], "--box expects X0,Y0,X1,Y1"),
        (["--box", "10,2,3,4"], "X1 >= X0"),
    ],
)
def test_segment_parse_errors_name_the_flag(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "img.png", "--model", "m", "--out", str(tmp_path)] + extra)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_segment_needs_a_prompt(tiny_model_dir, image_file, tmp_path):
    with pytest.raises(SystemExit, match="at least one --point"):
        main(["segment", str(image_file), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out")])


def test_segment_rejects_a_point_outside_the_image(tiny_model_dir, image_file, tmp_path):
    with pytest.raises(SystemExit, match="point_coords must be XY pixels inside the image"):
        main(
            [
                "segment",
                str(image_file),
                "--model",
                str(tiny_model_dir),
                "--point",
                "900,10",
                "--out",
                str(tmp_path),
            ]
        )

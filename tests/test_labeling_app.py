"""The labelling page (`sam_hf.labeling.app`) and `sam-hf label`: a real browser on the real command, the
command's argument errors, and the exported Space."""

import io
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_hf.cli import main

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "label_app.png"
_PENDING = (255, 225, 25)  # the pending mask's outline colour (sam_hf.labeling.app._PENDING)
_TIMEOUT_MS = 60_000


@pytest.fixture
def photos(tmp_path):
    """A folder with two real photos from scikit-image: the cat (JPEG) and the coffee cup (PNG)."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str]) -> tuple[subprocess.Popen, str]:
    """Start `sam-hf label` as a user would; returns the process and the page's URL once it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sam_hf.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("labelling ") and " at http" in line:
            return process, line.split(" at ")[1].split()[0]
    process.kill()
    raise AssertionError("sam-hf label did not serve the page:\n" + "".join(lines))


def _stop(process: subprocess.Popen) -> str:
    """Ctrl-C, as a user stops the command; returns its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return output


def _canvas(page) -> np.ndarray:
    """The image the page shows, decoded from what the browser loaded."""
    source = page.locator("#sam-hf-canvas img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))


def _status(page, text: str) -> None:
    page.locator("#sam-hf-status").get_by_text(text).wait_for(timeout=_TIMEOUT_MS)


@pytest.mark.slow
@pytest.mark.skipif(_CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_label_in_the_browser(photos, tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright (pip install playwright; it drives the system chromium)"
    )
    out = tmp_path / "labels"
    port = _free_port()
    process, url = _start(
        ["label", str(photos), "--model", "sam-hf-tiny", "--out", str(out), "--port", str(port), "--device", "cpu"]
        + ["--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.5", "--points-per-side", "8"]
    )
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            _status(page, "image 1 of 2, 0 object(s) accepted")
            before = _canvas(page)
            assert before.shape == (300, 451, 3)  # chelsea.jpg, the first image by name, at its own size

            # Assisted-manual: a positive click on the cat's head, then a second one that refines the mask.
            image = page.locator("#sam-hf-canvas img")
            box = image.bounding_box()
            scale = box["width"] / before.shape[1]
            image.click(position={"x": 180 * scale, "y": 110 * scale})
            _status(page, "after 1 click(s)")
            assert page.locator("#sam-hf-candidates input[type=radio]").count() == 3
            image.click(position={"x": 260 * scale, "y": 150 * scale})
            _status(page, "after 2 click(s)")
            shown = _canvas(page)
            outline = np.all(shown == _PENDING, axis=-1)
            assert outline.sum() > 20, "the pending mask is not drawn on the page"
            assert not np.all(before == _PENDING, axis=-1).any()
            page.locator("body").click(position={"x": 5, "y": 5})  # focus off any field, as after a click
            page.keyboard.press("a")  # the accept shortcut
            _status(page, "1 object(s) accepted")

            # Semi-automatic: pre-filled masks appear; accept the first one; add one more object with a click.
            page.locator("#sam-hf-mode").get_by_text("semi-automatic").click()
            prefilled = page.locator("#sam-hf-prefilled input[type=radio]")
            prefilled.first.wait_for(timeout=_TIMEOUT_MS)
            offered = prefilled.count()
            page.locator("#sam-hf-accept-prefilled").click()
            _status(page, "2 object(s) accepted")
            page.wait_for_function(
                f"document.querySelectorAll('#sam-hf-prefilled input[type=radio]').length === {offered - 1}",
                timeout=_TIMEOUT_MS,
            )
            image.click(position={"x": 60 * scale, "y": 250 * scale})
            _status(page, "after 1 click(s)")
            page.locator("#sam-hf-class input, #sam-hf-class textarea").first.fill("floor")
            page.locator("#sam-hf-accept").click()
            _status(page, "3 object(s) accepted")
            page.screenshot(path=str(_screenshot_path(tmp_path)), full_page=True)

            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("n")  # next image: finishes this one
            _status(page, "image 2 of 2")
            page.close()
            browser.close()
    finally:
        output = _stop(process)
    assert "Traceback" not in output

    import datasets

    dataset = datasets.load_from_disk(str(out))
    rows = [row for split in dataset.values() for row in split if row["file_name"] == "chelsea.jpg"]
    assert len(rows) == 1
    row = rows[0]
    assert len(row["masks"]) == 3
    assert sorted(row["stage"]) == ["auto", "manual", "semi"]
    stage = dict(zip(row["stage"], range(3), strict=True))
    assert row["num_clicks"][stage["manual"]] == 2
    assert row["num_clicks"][stage["semi"]] == 1
    assert row["num_clicks"][stage["auto"]] == 0
    assert row["class_name"][stage["semi"]] == "floor"
    assert set(row["model_id"]) == {"sam-hf-tiny"}
    assert all(revision for revision in row["model_revision"])
    assert all(seconds > 0 for seconds in row["seconds"])
    assert (out / "annotations.json").is_file()


def _screenshot_path(tmp_path: Path) -> Path:
    """docs/images/label_app.png with SAM_HF_UPDATE_SCREENSHOT=1 (the README's picture), else in tmp_path."""
    if os.environ.get("SAM_HF_UPDATE_SCREENSHOT", "0") == "1":
        _SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        return _SCREENSHOT
    return tmp_path / "label_app.png"

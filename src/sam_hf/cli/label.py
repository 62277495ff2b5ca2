"""`sam-hf label`: label images in the browser with the model's help, the human stages of SAM's data engine.

Starts the local labelling page (`sam_hf.labeling.app`) on one `LabelSession`: clicks and boxes on the image
give masks at once from the cached image embedding (assisted-manual), the automatic generator can pre-fill
confident masks to accept or reject (semi-automatic), and a button fine-tunes the model on the masks so far
(a retraining round). Every accepted mask is in the dataset at once; rerun the command to resume.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from . import SamHFUserError, add_model_arguments, resolve_device, resolve_model, user_input

__all__ = ["add_parser", "run"]

_MISSING_GRADIO = 'the labelling page needs gradio: pip install "sam_hf[app]"'


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "label",
        help="label images in the browser with clicks, boxes and pre-filled masks; retrain between rounds",
        description=__doc__,
    )
    parser.add_argument(
        "images",
        metavar="IMAGES_OR_DATASET",
        help="a folder of images, a dataset folder (datasets.save_to_disk, e.g. `sam-hf annotate` output, "
        "which may be OUT itself) or a COCO .json file; masks it holds are kept, and images added later are "
        "appended when the same OUT is labelled again",
    )
    parser.add_argument(
        "--image-root",
        default=None,
        help="image folder of a COCO .json input (default: found from its layout)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--out",
        metavar="DATASET",
        default=None,
        help="the labelled dataset folder (datasets.load_from_disk(OUT), OUT/annotations.json COCO); "
        "required unless --export-space",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="local port of the page (default: the first free one from 7860)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="run one retraining round on the masks in OUT without the page, print the rounds and exit",
    )
    parser.add_argument(
        "--export-space",
        metavar="DIR",
        default=None,
        help="write a Hugging Face Space (app.py, requirements.txt, README.md, the images, the sam_hf source) "
        "that runs this page, and exit",
    )
    semi = parser.add_argument_group("semi-automatic mode (pre-filled masks of the automatic generator)")
    semi.add_argument(
        "--pred-iou-thresh", type=float, default=0.88, help="starting predicted-IoU threshold (a page slider)"
    )
    semi.add_argument(
        "--stability-score-thresh",
        type=float,
        default=0.95,
        help="starting stability threshold (a page slider)",
    )
    semi.add_argument(
        "--points-per-side",
        type=int,
        default=32,
        help="grid of prompts per image side (cost grows with its square)",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        default=None,
        help="the page's Export button (and the end of --retrain) also pushes the dataset to this Hub repo",
    )
    parser.set_defaults(func=run, interrupt_hint="rerun the same command to resume where you stopped")


def run(args: argparse.Namespace) -> int:
    from ..data.sources import source_kind

    with user_input(f"IMAGES_OR_DATASET {args.images}"):  # before any model loads
        source_kind(args.images)
    if args.port is not None and not 0 < args.port < 65536:
        raise SamHFUserError(f"--port must be between 1 and 65535, got {args.port}")
    if args.export_space is not None:
        if args.retrain:
            raise SamHFUserError(
                "--export-space and --retrain cannot be combined: the Space retrains from its page"
            )
        from ..labeling.space import export_space

        model = resolve_model(args.model).name  # checked before anything is written
        with user_input(f"IMAGES_OR_DATASET {args.images}"):
            folder = export_space(args.export_space, images=args.images, model=model)
        print(
            f"wrote a Space in {folder}; try it with `cd {folder} && pip install -r requirements.txt && python app.py`"
        )
        return 0
    for name in ("pred_iou_thresh", "stability_score_thresh"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            flag = "--" + name.replace("_", "-")
            raise SamHFUserError(f"{flag} must be in [0, 1], got {getattr(args, name)}")
    if args.points_per_side < 1:
        raise SamHFUserError(f"--points-per-side must be at least 1, got {args.points_per_side}")
    if args.out is None:
        raise SamHFUserError("--out is required: the dataset folder to write the labels to")
    if not args.retrain:
        _require_gradio()
    session = open_session(args)
    try:
        if args.retrain:
            return _retrain(session, args.push_to_hub)
        serve(session, args)
    finally:
        session.close()
    return 0


def open_session(args: argparse.Namespace) -> Any:
    """The `LabelSession` the command's arguments describe (the model checked before anything loads)."""
    from ..data.sources import open_images
    from ..labeling import LabelSession
    from ..labeling.store import DatasetLockedError

    model = resolve_model(args.model)  # resolved once, and checked before anything loads
    device = resolve_device(args.device)
    try:
        with user_input(f"IMAGES_OR_DATASET {args.images}"):
            images = open_images(args.images, image_root=args.image_root)
            return LabelSession(model=model, images=images, out=args.out, device=device)
    except DatasetLockedError as error:
        raise SamHFUserError(f"--out: {error}") from error


def serve(session: Any, args: argparse.Namespace) -> None:
    """Serve the page on `session` at `--host`/`--port` until Ctrl-C (KeyboardInterrupt, raised)."""
    from ..labeling.app import build_app, launch

    demo = build_app(
        session,
        push_to_hub=args.push_to_hub,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        points_per_side=args.points_per_side,
    )
    url = launch(demo, host=args.host, port=args.port, block=False, quiet=True)
    print(f"labelling {session.num_images} images into {session.out} at {url} (Ctrl-C to stop)", flush=True)
    try:
        # Gradio's `demo.block_thread()` would swallow Ctrl-C; raised, `main` turns it into exit 130.
        while True:
            time.sleep(1.0)
    finally:
        demo.close()


def _require_gradio() -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SamHFUserError(_MISSING_GRADIO) from None


def _retrain(session: Any, push_to_hub: str | None) -> int:
    job = session.start_retrain()
    shown = None
    while not job.wait(timeout=0.5):
        line = f"retraining round {job.round}: {100 * job.progress:3.0f}% {job.message}"
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
    if job.error is not None:
        raise RuntimeError(f"retraining failed: {job.error}")
    session.poll_retrain()
    for stats in session.round_stats():
        print(_round_line(stats))
    if push_to_hub is not None:
        session.export(push_to_hub=push_to_hub)
    return 0


def _round_line(stats: dict[str, Any]) -> str:
    """One line of `LabelSession.round_stats()`: the model of the round and what labelling with it cost."""
    stages = ", ".join(f"{stage} {count}" for stage, count in stats["objects_per_stage"].items())
    clicks, seconds = stats["clicks_per_object"], stats["seconds_per_mask"]
    return (
        f"round {stats['round']} ({stats['model_id']}): {stats['objects']} objects ({stages}); "
        f"clicks per object {'-' if clicks is None else f'{clicks:.2f}'}; "
        f"seconds per mask {'-' if seconds is None else f'{seconds:.1f}'}"
    )

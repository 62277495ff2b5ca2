"""The labelling web page: a Gradio `Blocks` around one `LabelSession`.

The page holds no labelling state: every event calls one `LabelSession` method and then redraws the page from
the session (`_view`). The one exception is the first corner of a box in box mode, kept per browser tab until
the second click. All events share one queue of concurrency 1, so the session sees one call at a time.

Gradio is imported only here (and lazily by `sam-hf label`), so `sam_hf.labeling` works without the `[app]`
extra. Keyboard shortcuts are a document `keydown` listener (gradio 6 takes page JavaScript in
`Blocks.launch(js=...)`, see `launch`) that clicks the page's buttons, and skip keys typed into text fields:
`a` or Enter accept, `z` or Backspace undo, `n` next image (which also marks the image finished).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from ..visualization import MaskLayer, draw_masks, marker_radius, palette_layers
from .session import LabelSession

__all__ = ["SHORTCUTS_JS", "TOOLS", "build_app", "launch"]

TOOLS = ("positive click", "negative click", "box", "brush", "eraser")
MODES = (("manual", "manual"), ("semi-automatic", "semi"))  # (label, LabelSession.mode)
_CONCURRENCY = {"concurrency_id": "session", "concurrency_limit": 1}

SHORTCUTS_JS = """
() => {
  const keys = {a: "sam-hf-accept", Enter: "sam-hf-accept", z: "sam-hf-undo", Backspace: "sam-hf-undo",
                n: "sam-hf-next"};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || target.isContentEditable
        || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName)) return;
    const id = keys[event.key];
    if (!id) return;
    const button = document.getElementById(id);
    if (button) { event.preventDefault(); button.click(); }
  });
}
"""

# Accepted objects in the colours of `PALETTE`; the pending mask in _PENDING, pre-filled candidates outlined.
_PENDING = (255, 225, 25)
_PREFILLED = (255, 255, 255)


def build_app(
    session: LabelSession,
    push_to_hub: str | None = None,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    points_per_side: int = 32,
) -> gr.Blocks:
    """The labelling page around `session`; call `launch` to serve it (it adds the keyboard shortcuts).

    Args:
        session: the open labelling session; the page reads and changes only it.
        push_to_hub: a dataset repo id the Export button also publishes to, or None to export locally only.
        pred_iou_thresh, stability_score_thresh: the semi-automatic mode's starting thresholds (sliders on the
            page), as `LabelSession.prefill` takes them.
        points_per_side: the automatic generator's grid of the semi-automatic mode (cost grows with its square).
    """
    with gr.Blocks(title="sam-hf label") as demo:
        corner = gr.State(None)  # box mode: the first corner (x, y) until the second click
        with gr.Row():
            with gr.Column(scale=3):
                canvas = gr.Image(
                    label="click on the image",
                    height=640,
                    interactive=False,
                    format="jpeg",  # far quicker to encode than PNG: the page redraws on every click
                    elem_id="sam-hf-canvas",
                    buttons=["fullscreen"],
                )
            with gr.Column(scale=1, min_width=280):
                status = gr.Markdown(elem_id="sam-hf-status")
                tool = gr.Radio(list(TOOLS), value=TOOLS[0], label="tool", elem_id="sam-hf-tool")
                radius = gr.Slider(
                    1, 100, value=10, step=1, label="brush / eraser radius (pixels)", elem_id="sam-hf-radius"
                )
                candidates = gr.Radio(
                    [], label="candidate masks (predicted IoU)", elem_id="sam-hf-candidates"
                )
                class_name = gr.Textbox(label="class name (optional)", elem_id="sam-hf-class")
                with gr.Row():
                    accept = gr.Button("Accept (a)", variant="primary", elem_id="sam-hf-accept")
                    undo = gr.Button("Undo (z)", elem_id="sam-hf-undo")
                with gr.Row():
                    previous = gr.Button("Previous", elem_id="sam-hf-previous")
                    next_ = gr.Button("Done, next (n)", elem_id="sam-hf-next")
                objects = gr.Dropdown([], label="accepted objects", elem_id="sam-hf-objects")
                delete = gr.Button("Delete object", elem_id="sam-hf-delete")
        with gr.Row():
            with gr.Column():
                mode = gr.Radio(list(MODES), value="manual", label="mode", elem_id="sam-hf-mode")
                pred_iou = gr.Slider(0.0, 1.0, value=pred_iou_thresh, step=0.01, label="pred_iou_thresh")
                stability = gr.Slider(
                    0.0, 1.0, value=stability_score_thresh, step=0.01, label="stability_score_thresh"
                )
                prefilled = gr.Radio([], label="pre-filled masks", elem_id="sam-hf-prefilled")
                with gr.Row():
                    accept_prefilled = gr.Button("Accept pre-filled", elem_id="sam-hf-accept-prefilled")
                    reject_prefilled = gr.Button("Reject pre-filled", elem_id="sam-hf-reject-prefilled")
            with gr.Column():
                retrain = gr.Button("Retrain on the masks so far", elem_id="sam-hf-retrain")
                progress = gr.Markdown(elem_id="sam-hf-progress")
                rounds = gr.Dataframe(label="per labelling round", interactive=False, elem_id="sam-hf-rounds")
                export = gr.Button("Export", elem_id="sam-hf-export")
                exported = gr.Markdown(elem_id="sam-hf-exported")
        timer = gr.Timer(1.0, active=False)

        view = [canvas, status, candidates, objects, mode, prefilled, rounds]

        def redraw() -> tuple:
            return _view(session)

        def prefill(iou: float, stability_score: float) -> None:
            session.prefill(
                pred_iou_thresh=iou, stability_score_thresh=stability_score, points_per_side=points_per_side
            )

        @_user_errors
        def on_click(tool_name: str, first: Any, brush_radius: float, event: gr.SelectData) -> tuple:
            x, y = event.index
            if tool_name in ("brush", "eraser"):
                session.brush(x, y, brush_radius, erase=tool_name == "eraser")
                return None, *_view(session)
            if tool_name == "box":
                if first is None:
                    return (x, y), *_view(session, corner=(x, y))
                session.set_box(*_xyxy(first, (x, y)))
                return None, *_view(session)
            session.add_click(x, y, positive=tool_name == "positive click")
            return None, *_view(session)

        @_user_errors
        def on_candidate(choice: str | None) -> tuple:
            if choice is not None and session.proposal is not None:
                session.select_candidate(_candidate_index(choice))
            return _view(session)

        @_user_errors
        def on_accept(name: str) -> tuple:
            if session.proposal is not None:
                session.accept(class_name=name.strip() or None)
            return "", *_view(session)

        def on_undo() -> tuple:
            session.undo()
            return _view(session)

        def on_prefilled_choice(choice: str | None) -> tuple:
            return _view(session, chosen_prefilled=0 if choice is None else _candidate_index(choice))

        @_user_errors
        def on_delete(choice: str | None) -> tuple:
            if choice is not None:
                session.delete_object(_object_id(choice))
            return _view(session)

        @_user_errors
        def on_image(step: int, iou: float, stability_score: float) -> tuple:
            if step > 0:
                session.finish_image()
                session.next_image()
            else:
                session.previous_image()
            if session.mode == "semi":  # the mode stays; pre-filled masks belong to one image
                prefill(iou, stability_score)
            return _view(session)

        @_user_errors
        def on_mode(mode_name: str, iou: float, stability_score: float) -> tuple:
            if mode_name == "semi":
                prefill(iou, stability_score)
            else:
                session.mode = mode_name
            return _view(session)

        @_user_errors
        def on_prefilled(accept: bool, choice: str | None) -> tuple:
            if choice is not None:
                index = _candidate_index(choice)
                if accept:
                    session.accept_prefilled(index)
                else:
                    session.reject_prefilled(index)
            return _view(session)

        @_user_errors
        def on_retrain() -> tuple:
            session.start_retrain()
            return gr.Timer(active=True), _progress(session)

        def on_tick() -> tuple:
            job = session.retrain_job
            try:
                note = f"round {session.round}: the new model is loaded" if session.poll_retrain() else ""
            except RuntimeError as error:
                note = str(error)
            running = job is not None and not job.done
            return gr.Timer(active=running), note or _progress(session), *_view(session)

        @_user_errors
        def on_export() -> str:
            path = session.export(push_to_hub=push_to_hub)
            where = f" and pushed to `{push_to_hub}`" if push_to_hub else ""
            return f"exported to `{path}`{where}"

        demo.load(redraw, None, view, **_CONCURRENCY)
        canvas.select(on_click, [tool, corner, radius], [corner, *view], **_CONCURRENCY)
        tool.change(lambda: None, None, corner, **_CONCURRENCY)
        candidates.input(on_candidate, candidates, view, **_CONCURRENCY)
        gr.on([accept.click, class_name.submit], on_accept, class_name, [class_name, *view], **_CONCURRENCY)
        undo.click(on_undo, None, view, **_CONCURRENCY)
        delete.click(on_delete, objects, view, **_CONCURRENCY)
        next_.click(lambda *a: on_image(1, *a), [pred_iou, stability], view, **_CONCURRENCY)
        previous.click(lambda *a: on_image(-1, *a), [pred_iou, stability], view, **_CONCURRENCY)
        gr.on(
            [mode.input, pred_iou.release, stability.release],
            on_mode,
            [mode, pred_iou, stability],
            view,
            **_CONCURRENCY,
        )
        prefilled.input(on_prefilled_choice, prefilled, view, **_CONCURRENCY)
        accept_prefilled.click(lambda c: on_prefilled(True, c), prefilled, view, **_CONCURRENCY)
        reject_prefilled.click(lambda c: on_prefilled(False, c), prefilled, view, **_CONCURRENCY)
        retrain.click(on_retrain, None, [timer, progress], **_CONCURRENCY)
        timer.tick(on_tick, None, [timer, progress, *view], **_CONCURRENCY)
        export.click(on_export, None, exported, **_CONCURRENCY)
    return demo


def launch(
    demo: gr.Blocks, host: str | None = None, port: int | None = None, block: bool = True, **kwargs: Any
) -> str:
    """Serve the page with its keyboard shortcuts; returns its local URL.

    Args:
        demo: the page from `build_app`.
        host, port: where to listen; None lets Gradio choose (`GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT`, as a
            Hugging Face Space sets them, else 127.0.0.1 and the first free port from 7860).
        block: wait until the server is stopped (Ctrl-C); False returns at once, the server running in a thread
            (stop it with `demo.close()`).
        **kwargs: passed on to `gradio.Blocks.launch`.
    """
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        js=SHORTCUTS_JS,
        **kwargs,
    )
    return url


def _view(session: LabelSession, corner: tuple[int, int] | None = None, chosen_prefilled: int = 0) -> tuple:
    """Everything the page shows, read from the session: canvas, status, candidates, objects, mode, pre-filled
    masks (`chosen_prefilled` selected and tinted), rounds table."""
    proposal = session.proposal
    prefilled = session.prefilled
    objects = session.objects
    chosen_prefilled = min(chosen_prefilled, len(prefilled) - 1)
    canvas = _overlay(session.image, objects, proposal, prefilled, chosen_prefilled, corner)
    lines = [
        f"**{session.image_name}** — image {session.image_index + 1} of {session.num_images}, "
        f"{len(objects)} object(s) accepted"
    ]
    if proposal is not None:
        score = float(proposal.iou_predictions[proposal.selected])
        lines.append(
            f"pending mask: predicted IoU {score:.3f} after {proposal.num_clicks} click(s)"
            f", {proposal.num_strokes} brush stroke(s)"
        )
    if corner is not None:
        lines.append(f"box: first corner at ({corner[0]}, {corner[1]}); click the opposite corner")
    choices = (
        []
        if proposal is None
        else [_candidate_label(i, float(s)) for i, s in enumerate(proposal.iou_predictions)]
    )
    chosen = None if proposal is None else choices[proposal.selected]
    prefilled_choices = [_candidate_label(i, float(c.predicted_iou)) for i, c in enumerate(prefilled)]
    object_choices = [_object_label(obj) for obj in objects]
    return (
        canvas,
        "\n\n".join(lines),
        gr.Radio(choices, value=chosen),
        gr.Dropdown(object_choices, value=None),
        session.mode,
        gr.Radio(prefilled_choices, value=prefilled_choices[chosen_prefilled] if prefilled else None),
        _rounds_table(session),
    )


def _progress(session: LabelSession) -> str:
    job = session.retrain_job
    if job is None:
        return ""
    return f"retraining round {job.round}: {100 * job.progress:.0f}% — {job.message}"


def _rounds_table(session: LabelSession) -> Any:
    """`LabelSession.round_stats()` as a table, one column per stage."""
    import pandas as pd

    rows = []
    for stats in session.round_stats():
        row = {key: value for key, value in stats.items() if key != "objects_per_stage"}
        rows.append({**row, **stats["objects_per_stage"]})
    return pd.DataFrame(rows)


def _user_errors(handler: Callable) -> Callable:
    """`handler` with the session's errors about the user's action shown on the page (`gr.Error`)."""

    @functools.wraps(handler)
    def wrapped(*args: Any) -> Any:
        try:
            return handler(*args)
        except (ValueError, LookupError, RuntimeError) as error:
            raise gr.Error(str(error)) from error

    return wrapped


def _candidate_label(index: int, score: float) -> str:
    return f"{index + 1}: IoU {score:.3f}"


def _candidate_index(label: str) -> int:
    return int(label.split(":", 1)[0]) - 1


def _object_label(obj: Any) -> str:
    name = f" {obj.class_name}" if obj.class_name else ""
    return f"{obj.id}:{name} ({obj.stage}, {obj.num_clicks} clicks, {obj.num_strokes} strokes)"


def _object_id(label: str) -> int:
    return int(label.split(":", 1)[0])


def _xyxy(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])


def _overlay(
    image: np.ndarray,
    objects: list,
    proposal: Any,
    prefilled: list,
    chosen_prefilled: int,
    corner: tuple[int, int] | None,
) -> Image.Image:
    """The image with accepted objects tinted in their colours, pre-filled masks outlined (the chosen one
    also tinted), the pending mask tinted and outlined, its clicks and box (`draw_masks`), and a cross at a
    pending box corner."""
    layers = [*palette_layers(obj.mask for obj in objects)]
    for index, candidate in enumerate(prefilled):
        alpha = 0.4 if index == chosen_prefilled else 0.0
        layers.append(MaskLayer(candidate.mask, _PREFILLED, alpha=alpha, outline=True))
    points = labels = box = None
    if proposal is not None:
        layers.append(MaskLayer(proposal.mask, _PENDING, alpha=0.55, outline=True))
        points, labels, box = proposal.point_coords, proposal.point_labels, proposal.box
    picture = draw_masks(image, layers, points, labels, box)
    if corner is not None:
        x, y = corner
        arm = 2 * marker_radius(picture.size)
        draw = ImageDraw.Draw(picture)
        draw.line((x - arm, y, x + arm, y), fill=_PENDING, width=2)
        draw.line((x, y - arm, x, y + arm), fill=_PENDING, width=2)
    return picture

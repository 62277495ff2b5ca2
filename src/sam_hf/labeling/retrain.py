"""A retraining round of the data engine: fine-tune on the masks labelled so far, in the background.

As in the SAM paper's assisted-manual stage (the model was retrained on the newly annotated masks between
rounds), each round fine-tunes the session's starting model on every mask accepted so far with the
package's fine-tuning job (`sam_hf.training.job.run_finetune`), writes the result to `out/rounds/<n>/`
(a `sam-hf finetune` output folder, loadable by every `--model`) and loads it through
`sam_hf.hub.load_model`, ready for `LabelSession.poll_retrain` to swap in.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from .store import LabelStore

__all__ = ["RETRAIN_DEFAULTS", "RetrainJob", "start_retrain"]

_TRAINING_SHARE = 0.9  # of the progress bar; loading and measuring the new model take the rest
# The labels are the only data: no held-out evaluation. The whole decoder, with interactive correction passes and
# enough epochs, is the round that made the held-out annotator faster (benchmarks/bench_label_loop.py).
RETRAIN_DEFAULTS = {
    "eval_split": None,
    "epochs": 16,
    "batch_size": 4,
    "learning_rate": 3e-4,
    "lora_r": 0,
    "correction_clicks": 3,
}


@dataclasses.dataclass
class RetrainJob:
    """A retraining round running in a background thread.

    Attributes:
        round: the round number (its output is `output_dir = out/rounds/<round>`).
        progress: 0..1; message: what it is doing; done: finished, well or not; error: the exception, if any.
        num_masks: masks it trains on.
        model, processor, model_id, model_revision: the new model once done (None before).
        swapped: `LabelSession.poll_retrain` has switched to it.
    """

    round: int
    output_dir: Path
    num_masks: int = 0
    progress: float = 0.0
    message: str = "starting"
    done: bool = False
    error: BaseException | None = None
    model: Any = None
    processor: Any = None
    model_id: str | None = None
    model_revision: str | None = None
    swapped: bool = False
    _thread: threading.Thread | None = dataclasses.field(default=None, repr=False)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done (or `timeout` seconds passed); returns `done`."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done


def start_retrain(store: LabelStore, base_model: str, **finetune_overrides: Any) -> RetrainJob:
    """Start a retraining round on every mask stored in `store` (see the module docstring).

    Args:
        store: the session's output folder.
        base_model: the model to fine-tune, in any form `sam_hf.hub.load_model` accepts.
        **finetune_overrides: `sam_hf.training.FinetuneConfig` fields over `RETRAIN_DEFAULTS`. `model`,
            `dataset` and `output_dir` are set by the round.

    Returns:
        The running `RetrainJob`.

    Raises:
        ValueError: an override is not a `FinetuneConfig` field, or no mask is stored yet.
    """
    from ..training.loop import FinetuneConfig

    names = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"model", "dataset", "output_dir"}
    unknown = sorted(set(finetune_overrides) - names)
    if unknown:
        raise ValueError(f"finetune_overrides must be FinetuneConfig fields {sorted(names)}, got {unknown}")
    number = max((r["round"] for r in store.rounds()), default=-1) + 1
    output_dir = store.round_folder(number)
    dataset = output_dir / "labels"
    num_masks = store.save_training_dataset(dataset)
    if num_masks == 0:
        raise ValueError("no mask is accepted yet: accept some masks before retraining")
    config = FinetuneConfig(
        model=base_model,
        dataset=str(dataset),
        output_dir=str(output_dir),
        **{**RETRAIN_DEFAULTS, **finetune_overrides},
    )
    job = RetrainJob(round=number, output_dir=output_dir, num_masks=num_masks)
    job._thread = threading.Thread(
        target=_run, args=(job, config), name=f"sam-hf-retrain-{number}", daemon=True
    )
    job.message = f"fine-tuning on {num_masks} masks"
    job._thread.start()
    return job


def _run(job: RetrainJob, config: Any) -> None:
    from ..hub.loading import load_model
    from ..training.job import run_finetune
    from .session import model_revision

    def on_step(step: int, total: int) -> None:
        job.progress = _TRAINING_SHARE * step / total
        job.message = f"fine-tuning on {job.num_masks} masks: step {step}/{total}"

    try:
        run_finetune(config, on_step=on_step)
        job.message = "loading the new model"
        model, processor, resolved = load_model(config.output_dir, merge_adapter=True, verbose=False)
        job.model_revision = model_revision(resolved, model)
        job.model, job.processor, job.model_id = model, processor, resolved.name
        job.progress, job.message = 1.0, f"round {job.round} ready: {resolved.describe()}"
    except BaseException as error:  # reported to the session, which raises it in poll_retrain
        job.error = error
        job.message = f"failed: {type(error).__name__}: {error}"
    finally:
        job.done = True

"""Label in the browser: SAM's assisted-manual and semi-automatic data-engine stages, and retraining rounds.

The core (`LabelSession`, the store, retraining, the simulated annotator) needs no UI library; the Gradio
app lives in `sam_hf.labeling.app` (extra `sam_hf[app]`).
"""

from .retrain import RetrainJob
from .session import LabelledObject, LabelSession, PrefilledMask, Proposal
from .store import PROVENANCE_COLUMNS, STAGES, DatasetLockedError, LabelStore

__all__ = [
    "PROVENANCE_COLUMNS",
    "STAGES",
    "DatasetLockedError",
    "LabelSession",
    "LabelStore",
    "LabelledObject",
    "PrefilledMask",
    "Proposal",
    "RetrainJob",
]

"""Evaluation: the prompting protocol, the `evaluate` metric and the results file."""

from .metric import SamSegmentation, mask_iou
from .protocol import PROMPT_TYPES, EvaluationProtocol, evaluate_model
from .results import (
    EVAL_RESULTS_NAME,
    NOT_MEASURED,
    flat_metrics,
    metric_label,
    results_table,
    timed_run,
    write_eval_results,
)

__all__ = [
    "EVAL_RESULTS_NAME",
    "NOT_MEASURED",
    "PROMPT_TYPES",
    "EvaluationProtocol",
    "SamSegmentation",
    "evaluate_model",
    "flat_metrics",
    "mask_iou",
    "metric_label",
    "results_table",
    "timed_run",
    "write_eval_results",
]

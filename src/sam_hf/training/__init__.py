"""Training library: the collator (prompt sampling per step), the embedding cache, LoRA setup, the fine-tuning
loop (`loop.finetune`) and the whole job around it (`job.run_finetune`: evaluation, summary, card, push)."""

from .job import run_finetune
from .loop import FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "finetune", "run_finetune"]

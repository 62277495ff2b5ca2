"""Training library: the collator (prompt sampling per step), the embedding cache, LoRA setup, the fine-tuning
loop (`loop.finetune`) and the whole job around it (`job.run_finetune`: evaluation, summary, card, push)."""

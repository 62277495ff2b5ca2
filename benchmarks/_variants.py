"""The SAM family members the benchmarks compare, each against its reference package, and the machine line.

Every benchmark that takes `--variant` builds both models here: the reference model by its own package's
registry with seeded random weights at full size (nothing is downloaded), and the `SamHFModel` of the same
preset loaded from its state dict strictly, so both compute with the same weights.
"""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path

# preset -> (reference package, what it is)
VARIANTS = {
    "vit_b": ("segment_anything", "SAM ViT-B"),
    "vit_t": ("mobile_sam", "MobileSAM (TinyViT)"),
}


def reference_and_ours(variant: str, seed: int = 0):
    """`(reference package, reference Sam, SamHFModel)` with the same seeded random weights, in eval mode."""
    import torch

    from sam_hf import SamHFConfig, SamHFModel

    package = importlib.import_module(VARIANTS[variant][0])
    torch.manual_seed(seed)
    reference = package.sam_model_registry[variant]().eval()
    ours = SamHFModel(SamHFConfig.from_preset(variant)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return package, reference, ours


def machine() -> str:
    """The CPU model, torch's threads and the load average: numbers from a shared machine say so."""
    import torch

    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{model} ({os.cpu_count()} CPUs, {torch.backends.cpu.get_cpu_capability()}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, load average {load}"
    )

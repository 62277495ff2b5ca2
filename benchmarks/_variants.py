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

# preset -> (reference package, what it is, the reference registry's name for it)
VARIANTS = {
    "vit_b": ("segment_anything", "SAM ViT-B", "vit_b"),
    "vit_t": ("mobile_sam", "MobileSAM (TinyViT)", "vit_t"),
    "sam_hq_vit_b": ("segment_anything_hq", "SAM-HQ ViT-B", "vit_b"),
    "sam_hq_vit_tiny": ("segment_anything_hq", "Light HQ-SAM (TinyViT + HQ decoder)", "vit_tiny"),
}


def reference_and_ours(variant: str, seed: int = 0):
    """`(reference package, reference Sam, SamHFModel)` with the same seeded random weights, in eval mode."""
    import torch

    from sam_hf import SamHFConfig, SamHFModel

    package_name, _, registry_name = VARIANTS[variant]
    package = importlib.import_module(package_name)
    torch.manual_seed(seed)
    reference = package.sam_model_registry[registry_name]().eval()
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

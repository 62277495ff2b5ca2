"""Shared fixtures: tiny models for behaviour, a seeded full-size official SAM for parity, real photos; a
fresh interpreter where sam_hf cannot be imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch

from sam_hf import SamHFConfig, SamHFModel

# Run first in the subprocess: any import of sam_hf fails, as where it is not installed.
_BLOCK_SAM_HF = """
import importlib.abc, sys

class _NoSamHF(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sam_hf" or name.startswith("sam_hf."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _NoSamHF())
"""


def run_without_sam_hf(script: str, modules_cache: str | os.PathLike) -> str:
    """Run `script` (dedented) in a fresh interpreter where `import sam_hf` fails, offline, with transformers'
    remote-code modules under `modules_cache`; returns its stdout, fails the test if it fails."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(modules_cache))
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_SAM_HF + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def console_script(name: str) -> str | None:
    """The path of the console script `name` of the running interpreter's installation (its venv's `bin/`,
    whether or not the venv is activated), else on PATH; None when neither has it."""
    return shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)


def randomize_positional_terms(module: torch.nn.Module, seed: int = 0) -> None:
    """SAM initialises absolute and relative position tables to zero; random values make parity tests bite."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def assert_bit_exact(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys, dtypes and values, bit for bit: what a lossless checkpoint conversion must give."""
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


@pytest.fixture
def tiny_config() -> SamHFConfig:
    return SamHFConfig.from_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config) -> SamHFModel:
    torch.manual_seed(0)
    model = SamHFModel(tiny_config).eval()
    randomize_positional_terms(model)
    return model


@pytest.fixture(scope="session")
def official_vit_b():
    """The official ViT-B SAM with seeded random weights (positional terms randomised too)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    randomize_positional_terms(sam)
    return sam.eval()


def perturb_all_weights(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Add small seeded noise to every floating tensor of the state dict (batch-norm running variances stay
    positive): reference inits leave biases, position tables and some batch-norm scales at constants."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * scale
                tensor.add_(noise.abs() if name.endswith("running_var") else noise)


@pytest.fixture(scope="session")
def official_vit_t():
    """MobileSAM (`mobile_sam`'s vit_t) with seeded random weights, every tensor perturbed, in eval mode."""
    from mobile_sam import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_t"]()
    perturb_all_weights(sam)
    return sam.eval()  # after the perturbation: TinyViT caches its attention biases when put in eval mode


def official_sam_hq(name: str) -> torch.nn.Module:
    """SAM-HQ (`segment_anything_hq`'s `name`: "vit_b", "vit_tiny" for Light HQ-SAM, ...) with seeded random
    weights, every tensor perturbed, in eval mode."""
    from segment_anything_hq import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry[name]()
    perturb_all_weights(sam)
    return sam.eval()


@pytest.fixture(scope="session")
def official_hq_vit_tiny():
    """Light HQ-SAM (TinyViT + the HQ decoder) from `segment_anything_hq`, seeded and perturbed."""
    return official_sam_hq("vit_tiny")


@pytest.fixture(scope="session")
def official_hq_vit_b():
    """SAM-HQ ViT-B from `segment_anything_hq`, seeded and perturbed."""
    return official_sam_hq("vit_b")


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image, HxWx3 uint8."""
    from skimage import data

    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}


def pytest_collection_modifyitems(config, items):
    """Quick tests first: a broken basic behaviour fails in minutes, before the full-size and multi-process runs."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)

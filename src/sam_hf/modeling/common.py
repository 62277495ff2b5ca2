"""Small building blocks shared by the image encoders and the decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ImageEncoderBase", "LayerNorm2d", "MLPBlock", "are_plain"]


def are_plain(modules: Sequence[nn.Module], kinds: Sequence[type[nn.Module]]) -> bool:
    """Each module is exactly its class in `kinds` (not a subclass, an adapter or a `modules_to_save` copy) and
    carries no forward hooks: a fast path may then read its weights instead of calling it, computing what the
    call would."""
    return len(modules) == len(kinds) and all(
        type(m) is kind and not (m._forward_hooks or m._forward_pre_hooks)
        for m, kind in zip(modules, kinds, strict=True)
    )


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a `(batch, channels, height, width)` tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Transformer feed-forward: `lin2(act(lin1(x)))`."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class FanInLinear(nn.Linear):
    """`nn.Linear` that a from-scratch init scales by fan-in (std `in_features ** -0.5`) instead of the small
    transformer std: for layers with no residual connection around them (`MLP`)."""


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (the decoder's hypernetwork and IoU heads)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(FanInLinear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class ImageEncoderBase(nn.Module):
    """What every registered image encoder (`registry.register_image_encoder`) shares: its config section, the
    official encoders' `img_size`, the check of its input and SAM's neck.

    Args:
        config: the encoder's vision config section (`image_size`, `num_channels`, `output_channels`).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def img_size(self) -> int:
        """Side of the square input in pixels (`config.image_size`), as the official encoders' `img_size`."""
        return self.config.image_size

    def build_neck(self, in_channels: int) -> nn.Sequential:
        """SAM's neck from the trunk's `in_channels` to `config.output_channels`: a 1x1 and a 3x3 convolution
        without bias, each followed by `LayerNorm2d`."""
        out = self.config.output_channels
        return nn.Sequential(
            nn.Conv2d(in_channels, out, kernel_size=1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out),
        )

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raises ValueError unless `pixel_values` is `(batch_size, num_channels, image_size, image_size)`."""
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch_size, {', '.join(map(str, expected))}), "
                f"got {tuple(pixel_values.shape)}; use SamHFProcessor to resize and pad images"
            )

"""The Mix Transformer encoder of SegFormer (Xie et al., NeurIPS 2021), MiT-B0 to B5.

Four stages, each: an overlapping patch embedding (a strided conv: 7x7 stride 4, then 3x3
stride 2) -> transformer blocks (efficient self-attention whose keys and values come from a
map shrunk ``sr_ratio`` times by a strided conv; Mix-FFN, a 3x3 depthwise conv between the two
linear layers, which stands in for position embeddings) -> LayerNorm -> an NCHW map. Strides
4, 8, 16, 32. Any input size works (no padding, no position table to interpolate).

Parameter names are the official release's (NVlabs/SegFormer ``mix_transformer.py``:
``patch_embed1.proj.weight``, ``block1.0.attn.kv.weight``, ``norm4.bias``), so its ImageNet
files load as they are; `segkit.models.weight_names` maps Hugging Face's names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import ConfigError

__all__ = ["MIT_VARIANTS", "MiTVariant", "MixTransformer"]


@dataclass(frozen=True)
class MiTVariant:
    """Widths, blocks per stage and the SegFormer decoder width of one MiT size."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    decoder_channels: int


_HEADS = (1, 2, 5, 8)
_SR_RATIOS = (8, 4, 2, 1)
_MLP_RATIO = 4
_WIDE = (64, 128, 320, 512)
# the paper's Table 6 / the official configs
MIT_VARIANTS = {
    "b0": MiTVariant((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": MiTVariant(_WIDE, (2, 2, 2, 2), 256),
    "b2": MiTVariant(_WIDE, (3, 4, 6, 3), 768),
    "b3": MiTVariant(_WIDE, (3, 4, 18, 3), 768),
    "b4": MiTVariant(_WIDE, (3, 8, 27, 3), 768),
    "b5": MiTVariant(_WIDE, (3, 6, 40, 3), 768),
}


def mit_variant(variant: str) -> MiTVariant:
    if variant not in MIT_VARIANTS:
        raise ConfigError(f"model.variant={variant!r}: choose one of {sorted(MIT_VARIANTS)}")
    return MIT_VARIANTS[variant]


class OverlapPatchEmbed(nn.Module):
    """``(N, C_in, H, W) -> ((N, h * w, dim) tokens, h, w)`` with ``h = ceil(H / stride)``."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention over ``(N, L, dim)`` tokens of an ``h x w`` map whose keys and
    values come from the map reduced by a ``sr_ratio`` x ``sr_ratio`` stride conv (cost
    ``L^2 / sr_ratio^2``). ``kv`` holds the key then the value projection (official layout)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, length, dim = x.shape
        q = self.q(x).reshape(n, length, self.heads, -1).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(n, dim, h, w)
            source = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        kv = self.kv(source).reshape(n, -1, 2, self.heads, dim // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (n, heads, length, dim / heads)
        return self.proj(y.transpose(1, 2).reshape(n, length, dim))


class DWConv(nn.Module):
    """The Mix-FFN's 3x3 depthwise conv on tokens of an ``h x w`` map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, _, dim = x.shape
        y = self.dwconv(x.transpose(1, 2).reshape(n, dim, h, w))
        return y.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """``fc1 -> 3x3 depthwise conv -> GELU -> fc2`` on ``(N, L, dim)`` tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class DropPath(nn.Module):
    """Stochastic depth: in training, a sample's residual branch is dropped with probability
    ``p`` (and the kept ones scaled by ``1 / (1 - p)``); identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, both with stochastic depth."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, drop_path: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, dim * _MLP_RATIO)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """MiT encoder ``variant`` (``b0`` ... ``b5``).

    ``forward(x: (N, in_channels, H, W)) -> [4 maps (N, dims[i], ceil(H / s), ceil(W / s))]``
    for ``s = 4, 8, 16, 32`` (each stride-2 embedding rounds up). ``drop_path_rate`` grows
    linearly over the blocks (0.1 in the official training). ``layer_norm_eps``: of the blocks'
    and the stages' LayerNorms, 1e-6 in the official code (Hugging Face's port uses 1e-5).
    """

    def __init__(
        self,
        variant: str = "b0",
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        spec = mit_variant(variant)
        self.channels = list(spec.dims)
        self.strides = [4, 8, 16, 32]
        n = sum(spec.depths)  # linear in the block index (plain floats: meta-device safe)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        c_in, first = in_channels, 0
        for i, (dim, depth) in enumerate(zip(spec.dims, spec.depths), start=1):
            patch, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(c_in, dim, patch, stride))
            blocks = nn.ModuleList(
                Block(dim, _HEADS[i - 1], _SR_RATIOS[i - 1], rates[first + j], layer_norm_eps)
                for j in range(depth)
            )
            setattr(self, f"block{i}", blocks)
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=layer_norm_eps))
            c_in, first = dim, first + depth
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            feats.append(x)
        return feats


def _init_weights(m: nn.Module) -> None:
    """The official init: truncated normal (std 0.02) linears, fan-out normal convs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)

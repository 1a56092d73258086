"""Swin-T backbone in the Swin-Transformer-Object-Detection layout used by DyHead.

Same arithmetic as the backbone of the official ``dyhead_swint_atss_fpn_2x_ms`` model
(microsoft/DynamicHead ``extra/swint.py``); module attribute names follow its checkpoint
keys (``backbone.backbone.bottom_up.*`` with that prefix removed). Stochastic depth (drop
path, rate rising linearly over the blocks from 0 to ``drop_path_rate``) acts in training
mode only; the official model has no dropout.

Points where this variant differs from timm's ``SwinTransformer``:

* inside a block the token map is padded (right/bottom, zeros) to window multiples after
  ``norm1`` and *before* the cyclic shift; padded tokens are not masked out;
* the shifted-window mask is built per forward for the padded size ``(Hp, Wp)``, with
  -100 for cross-region pairs; the shift is applied even when the map is smaller than
  one window;
* ``PatchMerging`` pads odd sizes, ``PatchEmbed`` pads the image to multiples of 4;
* each returned stage has its own LayerNorm (``norm<i>``) applied before downsampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

__all__ = [
    "SwinTransformer",
    "SwinBlock",
    "SwinStage",
    "WindowAttention",
    "PatchMerging",
    "PatchEmbed",
    "window_partition",
    "window_reverse",
    "shifted_window_mask",
]


def window_partition(x: Tensor, ws: int) -> Tensor:
    """Split ``(B, H, W, C)`` (H, W multiples of ``ws``) into ``(B*nW, ws*ws, C)`` windows."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B*nW, ws*ws, C)`` -> ``(B, h, w, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(ws: int) -> Tensor:
    """``(ws*ws, ws*ws)`` int64 index into the ``(2ws-1)^2`` relative-bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    coords = coords.flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
    rel = rel + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(
    hp: int, wp: int, ws: int, shift: int, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Additive SW-MSA mask ``(nW, ws*ws, ws*ws)`` for a padded ``(hp, wp)`` map: 0 within a
    region, -100 across regions (regions cut at ``-ws`` and ``-shift`` along each axis)."""
    img = torch.zeros((1, hp, wp, 1), device=device, dtype=dtype)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            img[:, hs, wsl, :] = label
            label += 1
    win = window_partition(img, ws).squeeze(-1)  # nW, N
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_bias(self) -> Tensor:
        """``(heads, N, N)`` bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x``: ``(B*nW, N, C)``; ``mask``: additive ``(nW, N, N)`` or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    """(Shifted-)window attention block; pads to window multiples before the shift."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
        mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        # Per sample, drops the residual branch with probability drop_path (training only).
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor | None) -> Tensor:
        """``x``: ``(B, h*w, C)``; ``mask`` is used only when ``shift_size > 0``."""
        b, l, c = x.shape
        if l != h * w:
            raise ValueError(f"token count {l} != {h}x{w}")
        ws, s = self.window_size, self.shift_size
        shortcut = x
        y = self.norm1(x).view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = y.shape[1], y.shape[2]
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        else:
            mask = None
        y = self.attn(window_partition(y, ws), mask=mask)
        y = window_reverse(y, ws, hp, wp)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        if pad_r or pad_b:
            y = y[:, :h, :w, :]
        x = shortcut + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 token merge (odd sizes zero-padded), LayerNorm(4C), Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """``(B, h*w, C)`` -> ``(B, ceil(h/2)*ceil(w/2), 2C)``."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """One stage: alternating W-MSA / SW-MSA blocks and an optional PatchMerging."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int = 7,
        mlp_ratio: float = 4.0, downsample: bool = True, drop_path: Sequence[float] = (),
    ) -> None:
        super().__init__()
        drop_path = tuple(drop_path) or (0.0,) * depth
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim, num_heads, window_size,
                shift_size=0 if i % 2 == 0 else self.shift_size, mlp_ratio=mlp_ratio,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, int, int]:
        """Returns ``(stage_out, next_input, next_h, next_w)``; tokens as ``(B, L, C)``."""
        ws = self.window_size
        hp = math.ceil(h / ws) * ws
        wp = math.ceil(w / ws) * ws
        mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device, x.dtype)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Pad image to multiples of the patch size (right/bottom), patchify conv, LayerNorm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, ceil(H/p), ceil(W/p))``."""
        p = self.patch_size
        h, w = x.shape[-2:]
        if w % p:
            x = F.pad(x, (0, p - w % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        x = self.proj(x)
        b, c, hh, ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(b, c, hh, ww)


class SwinTransformer(nn.Module):
    """Swin backbone returning NCHW maps ``{"stage<i+2>": ...}`` for ``i`` in ``out_indices``.

    Defaults are Swin-T: stage3/4/5 have 192/384/768 channels at strides 8/16/32.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        out_indices: Sequence[int] = (1, 2, 3),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        n = len(depths)
        # The official rule: rates rise linearly from 0 to drop_path_rate over all blocks.
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(n)]
        self.out_indices = tuple(sorted(out_indices))
        self.num_features = [embed_dim * 2**i for i in range(n)]
        self.patch_embed = PatchEmbed(4, 3, embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(
                self.num_features[i], depths[i], num_heads[i], window_size, mlp_ratio,
                downsample=i < n - 1, drop_path=rates[starts[i]:starts[i] + depths[i]],
            )
            for i in range(n)
        )
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        for i in self.out_indices:
            if not 0 <= i < n:
                raise ValueError(f"out index {i} out of range")
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
            self.out_channels[f"stage{i + 2}"] = self.num_features[i]
            self.strides[f"stage{i + 2}"] = 4 * 2**i

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` -> dict of ``(B, C_i, h_i, w_i)`` feature maps."""
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outs: dict[str, Tensor] = {}
        for i, stage in enumerate(self.layers):
            y, x, nh, nw = stage(x, h, w)
            if i in self.out_indices:
                y = getattr(self, f"norm{i}")(y)
                c = self.num_features[i]
                outs[f"stage{i + 2}"] = y.view(-1, h, w, c).permute(0, 3, 1, 2).contiguous()
            h, w = nh, nw
        return outs

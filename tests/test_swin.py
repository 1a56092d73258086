"""Tests for the Swin-T backbone (dyhead_zoo.models.swin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_zoo.models.swin import SwinBlock, SwinStage, SwinTransformer, shifted_window_mask

MANIFEST = Path(__file__).parent / "data" / "dyhead_swint_atss_fpn_2x_ms.keys.json"
PREFIX = "backbone.backbone.bottom_up."


@pytest.fixture(scope="module")
def model() -> SwinTransformer:
    torch.manual_seed(0)
    m = SwinTransformer().eval()
    # Larger relative-position biases than the init so they matter numerically.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0.0, 0.5)
    return m


def test_state_dict_matches_manifest(model: SwinTransformer) -> None:
    entries = [e for e in json.loads(MANIFEST.read_text())["keys"] if e["name"].startswith(PREFIX)]
    assert entries, "manifest has no backbone entries"
    sd = model.state_dict()
    assert list(sd) == [e["name"][len(PREFIX):] for e in entries]
    for e in entries:
        t = sd[e["name"][len(PREFIX):]]
        assert list(t.shape) == e["shape"], e["name"]
        assert str(t.dtype).removeprefix("torch.") == e["dtype"], e["name"]
    buffers = {n for n, _ in model.named_buffers()}
    assert buffers == {e["name"][len(PREFIX):] for e in entries if e["kind"] == "buffer"}
    assert all(n.endswith("attn.relative_position_index") for n in buffers)


@pytest.mark.parametrize("hw", [(100, 150), (224, 224), (37, 61)])
def test_output_shapes(model: SwinTransformer, hw: tuple[int, int]) -> None:
    assert model.out_channels == {"stage3": 192, "stage4": 384, "stage5": 768}
    assert model.strides == {"stage3": 8, "stage4": 16, "stage5": 32}
    h, w = hw
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert list(out) == ["stage3", "stage4", "stage5"]
    # Token grid after the padded stride-4 patch embed, then ceil-halving per merge.
    gh, gw = -(-h // 4), -(-w // 4)
    for name in ("stage2", "stage3", "stage4", "stage5"):
        if name in out:
            assert out[name].shape == (1, model.out_channels[name], gh, gw), name
            assert torch.isfinite(out[name]).all(), name
        gh, gw = (gh + 1) // 2, (gw + 1) // 2


def test_batch_equals_single(model: SwinTransformer) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 100, 150)
    with torch.no_grad():
        both = model(x)
        singles = [model(x[i : i + 1]) for i in range(2)]
    for k, v in both.items():
        for i in range(2):
            torch.testing.assert_close(v[i : i + 1], singles[i][k], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# Independent dense reference for one block (pad -> shift semantics).
# ---------------------------------------------------------------------------


def _dense_window_attention(blk: SwinBlock, y: Tensor, shift: int) -> Tensor:
    """Dense attention over a padded+rolled (1, Hp, Wp, C) map: a pair of tokens interacts
    iff it is in the same window and (when shifted) in the same shift region; the bias is
    looked up from explicit coordinate differences."""
    attn = blk.attn
    ws, nh = attn.window_size, attn.num_heads
    _, hp, wp, c = y.shape
    ii, jj = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    ii, jj = ii.flatten(), jj.flatten()

    def region(p: Tensor, size: int) -> Tensor:
        return (p >= size - ws).long() + (p >= size - shift).long()

    same = (ii[:, None] // ws == ii[None] // ws) & (jj[:, None] // ws == jj[None] // ws)
    if shift > 0:
        same &= region(ii, hp)[:, None] == region(ii, hp)[None]
        same &= region(jj, wp)[:, None] == region(jj, wp)[None]
    dh = (ii % ws)[:, None] - (ii % ws)[None] + ws - 1
    dw = (jj % ws)[:, None] - (jj % ws)[None] + ws - 1
    bias = attn.relative_position_bias_table[dh * (2 * ws - 1) + dw].permute(2, 0, 1)

    tokens = y.reshape(hp * wp, c)
    q, k, v = attn.qkv(tokens).view(hp * wp, 3, nh, c // nh).permute(1, 2, 0, 3)
    logits = (q @ k.transpose(-1, -2)) * (c // nh) ** -0.5 + bias
    logits = logits.masked_fill(~same, float("-inf"))
    out = (logits.softmax(-1) @ v).permute(1, 0, 2).reshape(hp * wp, c)
    return attn.proj(out).view(1, hp, wp, c)


def _reference_block(blk: SwinBlock, x: Tensor, h: int, w: int, pad_first: bool) -> Tensor:
    """Block forward; ``pad_first=False`` reproduces the (wrong here) shift-then-pad order."""
    ws, s = blk.window_size, blk.shift_size
    c = x.shape[-1]
    y = blk.norm1(x).view(1, h, w, c)
    pad = (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws)
    if pad_first:
        y = torch.roll(F.pad(y, pad), (-s, -s), (1, 2))
        y = torch.roll(_dense_window_attention(blk, y, s), (s, s), (1, 2))[:, :h, :w]
    else:
        y = F.pad(torch.roll(y, (-s, -s), (1, 2)), pad)
        y = torch.roll(_dense_window_attention(blk, y, s)[:, :h, :w], (s, s), (1, 2))
    x = x + y.reshape(1, h * w, c)
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("shift", [0, 3])
def test_block_pad_before_shift(shift: int) -> None:
    torch.manual_seed(2)
    h, w, dim = 10, 13, 24
    stage = SwinStage(dim, depth=2, num_heads=3, window_size=7, downsample=False).eval()
    with torch.no_grad():
        for p in stage.parameters():
            p.normal_(0.0, 0.3)
    blk = stage.blocks[1 if shift else 0]
    assert blk.shift_size == shift
    x = torch.randn(1, h * w, dim)
    with torch.no_grad():
        # Run the block exactly as its stage does (mask built by the stage).
        mask = shifted_window_mask(14, 14, 7, stage.shift_size)  # padded 10x13 -> 14x14
        got = blk(x, h, w, mask)
        ref = _reference_block(blk, x, h, w, pad_first=True)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        if shift:
            wrong = _reference_block(blk, x, h, w, pad_first=False)
            assert (got - wrong).abs().max() > 1e-2, "test cannot tell pad/shift order apart"
        # The whole stage equals its two blocks chained.
        torch.testing.assert_close(
            stage(x, h, w)[0], stage.blocks[1](stage.blocks[0](x, h, w, None), h, w, mask)
        )

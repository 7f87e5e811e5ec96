"""EDM2 U-Net (Karras et al. 2024, Fig. 21; NVlabs/edm2 training/networks_edm2.py), re-implemented from the paper's
description.

Module names (`enc.64x64_conv`, `enc.32x32_block0`, `dec.8x8_in0`, ...) and parameter names match the
official network one-to-one. Two additions, both behaviour-preserving:
  * dropout can be driven by explicit, pre-sampled masks (`dropout_masks`), so ECT's online and target
    passes share masks without saving/restoring RNG state (which breaks under torch.compile);
  * `attention='sdpa'` computes the same cosine attention with the fused kernel.
Shapes: N batch, C channels, H/W spatial, L tokens, h heads, c channels per head.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ect_scale.networks.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample


class Block(torch.nn.Module):
    """Encoder/decoder residual block with optional cosine self-attention (Fig. 21)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: Optional[float] = 256,
        attention_impl: str = "einsum",
    ):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.attention_impl = attention_impl
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def _attention(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        n, c, hgt, wid = x_NCHW.shape
        heads, ch = self.num_heads, c // self.num_heads
        qkv = self.attn_qkv(x_NCHW)
        # Channel layout of qkv is (head, channel-in-head, q/k/v), as in the official network. Work on the
        # token-major view [N, L, h, c, 3] (free for channels-last activations) and normalise each head's q, k, v
        # over its channels (pixel norm = cosine attention).
        qkv = qkv.permute(0, 2, 3, 1).reshape(n, hgt * wid, heads, ch, 3)
        q, k, v = normalize(qkv, dim=3).unbind(4)  # each [N, L, h, c]
        if self.attention_impl == "sdpa":
            q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # [N, h, L, c]
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [N, L, h, c]
        else:
            w = torch.einsum("nqhc,nkhc->nhqk", q, k / math.sqrt(ch)).softmax(dim=3)
            y = torch.einsum("nhqk,nkhc->nqhc", w, v)  # [N, L, h, c]
        y = y.reshape(n, hgt, wid, c).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        if not x_NCHW.is_contiguous(memory_format=torch.channels_last) or x_NCHW.is_contiguous():
            y = y.contiguous()
        return self.attn_proj(y)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, dropout_mask: Optional[torch.Tensor] = None):
        # Main branch.
        x = resample(x, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # Pixel norm.

        # Residual branch; the embedding scale c = 1 + gain * linear(emb) is computed in fp32.
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if dropout_mask is not None:
            y = y * dropout_mask.to(y.dtype)  # Explicit mask, already scaled by 1/(1-p).
        elif self.training and self.dropout != 0:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        # Join the branches.
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x


class UNet(torch.nn.Module):
    """EDM2 U-Net: MP-Fourier noise embedding, class embedding, encoder/decoder of `Block`s, gained output conv."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult=(1, 2, 3, 4),
        channel_mult_noise: Optional[int] = None,
        channel_mult_emb: Optional[int] = None,
        num_blocks: int = 3,
        attn_resolutions=(16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        dropout: float = 0.0,
        dropout_res: Optional[int] = None,
        attention: str = "einsum",
        **block_kwargs,
    ):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.img_resolution = img_resolution
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        def block(cin, cout, res, **kw):
            # ECT's ImageNet recipe: dropout only at feature resolutions <= dropout_res.
            p = dropout if (dropout_res is None or res <= dropout_res) else 0.0
            return Block(cin, cout, cemb, dropout=p, attention_impl=attention, **block_kwargs, **kw)

        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1  # +1: the constant-ones channel that replaces biases.
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, flavor="enc", resample_mode="down")
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = block(
                    cin, cout, res, flavor="enc", attention=res in attn_resolutions
                )

        self.dec = torch.nn.ModuleDict()
        skips = [m.out_channels for m in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, res, flavor="dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, res, flavor="dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, flavor="dec", resample_mode="up")
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = block(
                    cin, cout, res, flavor="dec", attention=res in attn_resolutions
                )
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    # ------------------------------------------------------------------
    def dropout_blocks(self) -> dict[str, tuple[Block, int]]:
        """Blocks with dropout > 0, keyed 'enc.<name>'/'dec.<name>', with their output resolution."""
        out = {}
        for part in ("enc", "dec"):
            for name, m in getattr(self, part).items():
                if isinstance(m, Block) and m.dropout > 0:
                    out[f"{part}.{name}"] = (m, int(name.split("x")[0]))
        return out

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: Optional[torch.Tensor],
        dropout_masks: Optional[dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        # Embedding (fp32: noise_labels are fp32).
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        masks = dropout_masks or {}

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, m in self.enc.items():
            x = m(x) if isinstance(m, MPConv) else m(x, emb, masks.get(f"enc.{name}"))
            skips.append(x)
        for name, m in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = m(x, emb, masks.get(f"dec.{name}"))
        return self.out_conv(x, gain=self.out_gain)

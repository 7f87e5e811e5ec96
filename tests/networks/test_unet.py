"""EDM2 U-Net structure: Table-6 parameter counts, official module names, block layout, dropout placement."""

import pytest
import torch

from ect_scale.config import NetworkConfig, from_dict
from ect_scale.config.presets import PRESETS, TABLE6_MPARAMS
from ect_scale.networks import Block, Precond
from ect_scale.networks.flops import count_params


@pytest.mark.parametrize("preset", sorted(TABLE6_MPARAMS))
def test_parameter_counts_match_edm2_table6(preset):
    n = count_params(from_dict(NetworkConfig, {"preset": preset}))
    assert round(n / 1e6, 1) == TABLE6_MPARAMS[preset]


def _meta_net(preset, **kw):
    with torch.device("meta"):
        return Precond(from_dict(NetworkConfig, {"preset": preset, **kw}))


def test_official_state_names_and_shapes_preset_s():
    """Names and shapes follow the layer table of EDM2 (NVlabs/edm2 training/networks_edm2.py, UNet; EDM2 Fig. 21) for
    preset S on 4x64x64 latents."""
    net = _meta_net("edm2-img512-s")
    sd = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = {
        "unet.out_gain": (),
        "unet.emb_fourier.freqs": (192,),
        "unet.emb_fourier.phases": (192,),
        "unet.emb_noise.weight": (768, 192),
        "unet.emb_label.weight": (768, 1000),
        "unet.enc.64x64_conv.weight": (192, 5, 3, 3),
        "unet.enc.64x64_block0.conv_res0.weight": (192, 192, 3, 3),
        "unet.enc.32x32_down.emb_gain": (),
        "unet.enc.32x32_block0.conv_skip.weight": (384, 192, 1, 1),
        "unet.enc.16x16_block0.attn_qkv.weight": (1728, 576, 1, 1),
        "unet.enc.16x16_block0.attn_proj.weight": (576, 576, 1, 1),
        "unet.enc.8x8_block0.emb_linear.weight": (768, 768),
        "unet.dec.8x8_in0.attn_qkv.weight": (2304, 768, 1, 1),
        "unet.dec.8x8_block3.conv_res0.weight": (768, 1344, 3, 3),
        "unet.dec.16x16_up.conv_res1.weight": (768, 768, 3, 3),
        "unet.dec.16x16_block0.conv_skip.weight": (576, 1344, 1, 1),
        "unet.dec.64x64_block3.conv_res0.weight": (192, 384, 3, 3),
        "unet.out_conv.weight": (4, 192, 3, 3),
        "logvar_fourier.freqs": (128,),
        "logvar_linear.weight": (1, 128),
    }
    for k, shape in expected.items():
        assert sd.get(k) == shape, k
    assert "unet.dec.8x8_in1.attn_qkv.weight" not in sd  # in1 has no attention.
    assert "unet.enc.64x64_block0.conv_skip.weight" not in sd  # Same width: no skip conv.


def test_block_layout_counts():
    net = _meta_net("edm2-img512-s")
    enc_blocks = [m for m in net.unet.enc.values() if isinstance(m, Block)]
    dec_blocks = [m for m in net.unet.dec.values() if isinstance(m, Block)]
    assert len(enc_blocks) == 15 and len(dec_blocks) == 21
    assert sum(1 for m in enc_blocks + dec_blocks if m.num_heads) == 15
    heads = {name: m.num_heads for name, m in net.unet.dec.items() if m.num_heads}
    assert heads["8x8_in0"] == 12 and heads["16x16_block0"] == 9


def test_dropout_only_at_or_below_dropout_res():
    net = _meta_net("edm2-img512-s", dropout=0.4, dropout_res=16)
    for part in ("enc", "dec"):
        for name, m in getattr(net.unet, part).items():
            if isinstance(m, Block):
                res = int(name.split("x")[0])
                assert m.dropout == (0.4 if res <= 16 else 0.0), name
    everywhere = _meta_net("edm2-img512-s", dropout=0.4)
    assert all(m.dropout == 0.4 for m in everywhere.unet.modules() if isinstance(m, Block))


def test_every_preset_builds_and_validates():
    for name in PRESETS:
        cfg = from_dict(NetworkConfig, {"preset": name})
        assert cfg.model_channels > 0


def test_forward_does_not_change_weights_in_train_mode(tiny_net):
    net = tiny_net(dropout=0.3).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(torch.randn(3, 4, 16, 16), torch.rand(3) + 0.1, torch.randint(10, (3,)))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_sdpa_attention_matches_einsum(tiny_net):
    ref = tiny_net(seed=3).eval()
    fused = tiny_net(seed=3, attention="sdpa").eval()
    fused.load_state_dict(ref.state_dict())
    x, s, y = torch.randn(4, 4, 16, 16), torch.tensor([0.1, 1.0, 5.0, 40.0]), torch.randint(10, (4,))
    torch.testing.assert_close(fused(x, s, y), ref(x, s, y), atol=1e-5, rtol=1e-5)

"""EDM2/ECT snapshot pickles -> ect_scale network files: exact tensors, same outputs, clear errors, CLI, s3 URLs."""

import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from ect_scale.config import NetworkConfig, from_dict
from ect_scale.data.encoders import LatentEncoder, PixelEncoder
from ect_scale.edm2_import import Edm2ImportError, import_edm2, match_preset
from ect_scale.networks import build_network
from ect_scale.networks.netfile import load_network_file, read_network_file
from tests.conftest import REPO, load_script
from tests.edm2_import.edm2_pickles import MARKER_ENV, Persisted, nvidia_module_names, snapshot_objects, write_snapshot


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """Where the hostile module source embedded in every test pickle would write if anything exec'd it."""
    path = tmp_path / "module_source_was_executed"
    monkeypatch.setenv(MARKER_ENV, str(path))
    yield path
    assert not path.exists(), "the pickle's embedded module source was executed"


def fp16_exact(net):
    """Round every tensor to fp16 and back, so the fp16 pickle holds exactly the network's values."""
    with torch.no_grad():
        for t in net.state_dict().values():
            t.copy_(t.half().float())
    return net.eval()


def with_gains(config):
    """A random network with non-zero gains (so every path matters), in fp32."""
    net = build_network(config)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.6)
    return net


def outputs_equal(a, b, config, labels=True):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, config.img_channels, config.img_resolution, config.img_resolution, generator=g)
    sigma = torch.tensor([0.02, 1.0, 40.0])
    y = torch.tensor([0, 3, 9]) if labels and config.label_dim else None
    with torch.no_grad():
        return torch.equal(a(x * sigma.view(-1, 1, 1, 1), sigma, y), b(x * sigma.view(-1, 1, 1, 1), sigma, y))


def test_edm2_snapshot_imports_exactly(tiny_net, tmp_path, marker):
    src = fp16_exact(tiny_net(seed=3))
    pkl, out = tmp_path / "network-snapshot-0134217-0.100.pkl", str(tmp_path / "out" / "net.safetensors")
    write_snapshot(pkl, src)
    result = import_edm2(str(pkl), out)
    tensors, config, meta = read_network_file(out)
    assert config.preset == "tiny-latent" and result.preset == "tiny-latent"
    assert {**vars(config), "preset": None} == {**vars(src.config), "preset": None}
    assert tensors.keys() == src.state_dict().keys()
    assert all(tensors[k].dtype == torch.float32 and torch.equal(tensors[k], v) for k, v in src.state_dict().items())
    assert meta["encoder"] == LatentEncoder().describe() and meta["ema"] == "power-0.100"
    assert meta["edm2"]["nimg"] == 134217728 and meta["edm2"]["loss_fn"]["P_mean"] == -0.4
    net, _ = load_network_file(out)
    assert outputs_equal(net.eval(), src, config)
    assert "preset     tiny-latent (exact architecture match)" in result.summary()
    assert result.num_params == sum(p.numel() for p in src.parameters())


def test_ect_release_layout_fp32_dropout_res_no_logvar(tiny_config, tmp_path, marker):
    torch.manual_seed(5)
    src = with_gains(tiny_config(preset="tiny-pixel", logvar_channels=0, dropout=0.3, dropout_res=8)).eval()
    pkl, out = tmp_path / "ect.pkl", str(tmp_path / "ect.safetensors")
    write_snapshot(pkl, src, layout="ect")
    result = import_edm2(str(pkl), out)
    net, meta = load_network_file(out)
    assert (net.config.dropout, net.config.dropout_res, net.config.logvar_channels) == (0.3, 8, 0)
    assert not net.has_logvar and result.preset is None and result.closest_preset == "tiny-pixel"
    assert meta["encoder"] == PixelEncoder().describe() and "assumed" in result.encoder_note
    assert outputs_equal(net.eval(), src, net.config)
    assert net.dropout_mask_shapes(2) == src.dropout_mask_shapes(2)


def test_keep_dtype_and_rgb_encoder(tiny_net, tmp_path, marker):
    src = fp16_exact(tiny_net(seed=2, preset="tiny-pixel", label_dim=0))
    pkl, out = tmp_path / "rgb.pkl", str(tmp_path / "rgb.safetensors")
    write_snapshot(pkl, src, encoder="rgb")
    import_edm2(str(pkl), out, dtype="keep")
    tensors, config, meta = read_network_file(out)
    assert all(t.dtype == torch.float16 for t in tensors.values()) and config.label_dim == 0
    assert meta["encoder"] == PixelEncoder().describe()
    net, _ = load_network_file(out)
    assert outputs_equal(net.eval(), src, config)


def test_cli_summary_overwrite_and_errors(tiny_net, tmp_path, marker, capsys):
    pkl = tmp_path / "edm2-tiny-2147483-0.130.pkl"
    write_snapshot(pkl, tiny_net(seed=1))
    cli = [sys.executable, os.path.join(REPO, "tools", "import_edm2.py"), str(pkl), f"{tmp_path}/pretrained/"]
    res = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "pretrained" / "edm2-tiny-2147483-0.130.safetensors"
    assert out.exists() and "preset     tiny-latent" in res.stdout and "verified   reloaded into Precond" in res.stdout
    assert "sd-vae" in res.stdout and "never executed" in res.stdout and "2,147,483,648 images" in res.stdout
    main = load_script("tools/import_edm2.py").main

    capsys.readouterr()
    assert main([str(pkl), str(out)]) == 2 and "exists" in capsys.readouterr().err
    assert main([str(pkl), str(out), "--force", "--no-forward"]) == 0
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"net": 1}))
    capsys.readouterr()
    assert main([str(bad), str(tmp_path / "bad.safetensors")]) == 2
    assert "found keys ['net']" in capsys.readouterr().err


def test_s3_urls(tiny_net, tmp_path, s3_bucket, marker):
    import fsspec

    src = fp16_exact(tiny_net(seed=4))
    write_snapshot(tmp_path / "s.pkl", src)
    with fsspec.open(f"{s3_bucket}/edm2/s.pkl", "wb") as f:
        f.write((tmp_path / "s.pkl").read_bytes())
    import_edm2(f"{s3_bucket}/edm2/s.pkl", f"{s3_bucket}/pretrained/s.safetensors")
    net, meta = load_network_file(f"{s3_bucket}/pretrained/s.safetensors")
    assert meta["source"] == f"{s3_bucket}/edm2/s.pkl" and outputs_equal(net.eval(), src, net.config)


# ----------------------------------------------------------------------------
# Errors: what was found, what was expected.


def dump(path, obj):
    with nvidia_module_names():
        path.write_bytes(pickle.dumps(obj, protocol=4))
    return str(path)


def module(data, path):
    """The persisted stand-in at a dotted module path of the snapshot's `ema` network."""
    obj = data["ema"]
    for part in path.split("."):
        mods = obj.meta["state"]["_modules"] if isinstance(obj, Persisted) else obj.__dict__["_modules"]
        obj = mods[part]
    return obj.meta["state"]


def test_not_a_snapshot(tmp_path, tiny_net):
    cases = [
        ([1, 2], "found a list at the top level, expected an EDM2 snapshot"),
        ({"net": 1, "optimizer": 2}, "found keys ['net', 'optimizer']"),
        ({"ema": Persisted("EDMPrecond", {})}, "EDM (2022) network"),
        ({"ema": {"weight": torch.zeros(2)}}, "'ema' is a dict, expected a persisted EDM2 'Precond'"),
    ]
    for obj, message in cases:
        with pytest.raises(Edm2ImportError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            import_edm2(dump(tmp_path / "x.pkl", obj), None)
    torch.save({"net": tiny_net().state_dict()}, tmp_path / "training-state.pt")
    assert zipfile.is_zipfile(tmp_path / "training-state.pt")
    with pytest.raises(Edm2ImportError, match="zip archive .* expected an EDM2 snapshot"):
        import_edm2(str(tmp_path / "training-state.pt"), None)
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(Edm2ImportError, match="not a readable pickle"):
        import_edm2(str(tmp_path / "trunc.pkl"), None)
    with pytest.raises(Edm2ImportError, match="file not found"):
        import_edm2(str(tmp_path / "missing.pkl"), None)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(extra_block_kwargs={"use_sdpa": True}), r"does not implement: use_sdpa=True \(Block unet.enc"),
        (dict(precond_extra_kwargs={"fancy_head": 3}), "does not implement: fancy_head=3"),
        (
            dict(precond_extra_kwargs={"resample_filter": [1, 3, 3, 1]}),
            r"resample_filter=\[1, 3, 3, 1\], expected \[1, 1\]",
        ),
        (
            dict(precond_extra_kwargs={"channel_mult": [1, 3]}),
            r"channel_mult: recorded init kwargs give \[1, 3\], tensors/attributes give \[1, 2\]",
        ),
    ],
)
def test_unexpressible_or_inconsistent_kwargs(tiny_net, tmp_path, marker, kwargs, message):
    write_snapshot(tmp_path / "x.pkl", tiny_net(), **kwargs)
    with pytest.raises(Edm2ImportError, match=message):
        import_edm2(str(tmp_path / "x.pkl"), None)


def test_unexpressible_attributes_and_tensors(tiny_net, tmp_path, marker):
    data = snapshot_objects(tiny_net())
    module(data, "unet.enc.8x8_block0")["res_balance"] = 0.4
    with pytest.raises(Edm2ImportError, match=r"different res_balance values \['0.3', '0.4'\]"):
        import_edm2(dump(tmp_path / "a.pkl", data), None)
    data = snapshot_objects(tiny_net())
    module(data, "unet.dec.8x8_in0")["_parameters"]["extra"] = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    with pytest.raises(Edm2ImportError, match=r"tensor unet.dec.8x8_in0.extra \(3,\) has no counterpart in ect_scale"):
        import_edm2(dump(tmp_path / "b.pkl", data), None)
    data = snapshot_objects(tiny_net())
    data["encoder"] = Persisted("FancyEncoder", {})
    with pytest.raises(Edm2ImportError, match="found encoder class 'FancyEncoder', expected StabilityVAEEncoder"):
        import_edm2(dump(tmp_path / "c.pkl", data), None)


def test_preset_matching():
    for name in ("edm2-img512-xs", "edm2-img512-s", "edm2-img64-xl"):
        config = from_dict(NetworkConfig, {"preset": name, "dropout": 0.3}, "network")
        assert match_preset(config) == (name, [])
    close, diffs = match_preset(from_dict(NetworkConfig, {"preset": "edm2-img512-s", "num_blocks": 2}, "network"))
    assert close == "edm2-img512-s" and diffs == ["num_blocks=2 (preset 3)"]

"""Network files (safetensors + config) round-trip, and bad files give clear errors."""

import pytest
import torch

from ect_scale.networks.netfile import NetworkFileError, load_network_file, read_network_file, save_network_file


def test_roundtrip_and_overrides(tiny_net, tmp_path):
    net = tiny_net(seed=4).eval()
    path = str(tmp_path / "sub" / "net.safetensors")
    save_network_file(path, net.state_dict(), net.config, meta={"source": "test", "nimg": 123})
    loaded, meta = load_network_file(path, overrides={"dropout": 0.3, "compute_dtype": "bfloat16"})
    assert meta == {"source": "test", "nimg": 123}
    assert loaded.config.dropout == 0.3 and loaded.compute_dtype == torch.bfloat16
    loaded32, _ = load_network_file(path)
    x, s = torch.randn(2, 4, 16, 16), torch.ones(2)
    assert torch.equal(loaded32.eval()(x, s, None), net(x, s, None))
    _, cfg, _ = read_network_file(path)
    assert cfg == net.config


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(NetworkFileError, match="not found"):
        read_network_file(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(NetworkFileError, match="not a readable safetensors"):
        read_network_file(str(bad))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(NetworkFileError, match="not an ect_scale network file"):
        read_network_file(str(tmp_path / "other.safetensors"))

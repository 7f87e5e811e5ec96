"""Small randomly initialised stand-ins for the detectors, written to disk in the real formats and loaded through
the real loading paths: a TorchScript file with the NVIDIA Inception call signature, and a local torch.hub
repository with a `dinov2_vitl14` entry point plus a weights file. The real weights are not available in CI."""

from __future__ import annotations

import os
import textwrap
import warnings

import torch
import torch.nn.functional as F


class InceptionStandin(torch.nn.Module):
    """`model(images, return_features=True)` on uint8 or float [N,3,H,W] in [0,255]; resizes inside (to 32x32)."""

    def __init__(self, feature_dim: int = 24):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(12, feature_dim, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(feature_dim, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32), size=(32, 32), mode="bilinear", align_corners=False)
        x = (x - 128) / 128
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        features = x.mean(dim=(2, 3)) + x.square().mean(dim=(2, 3))
        if return_features:
            return features
        return self.fc(features)


def write_inception_standin(directory: str, feature_dim: int = 24, seed: int = 0) -> str:
    """TorchScript stand-in saved as `<directory>/inception-2015-12-05.pt`; returns the path."""
    torch.manual_seed(seed)
    path = os.path.join(directory, "inception-2015-12-05.pt")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # The real file is TorchScript too.
        torch.jit.script(InceptionStandin(feature_dim).eval()).save(path)
    return path


HUBCONF = textwrap.dedent('''
    """Stand-in for facebookresearch/dinov2's hubconf: same entry point name and keyword, tiny ViT-like model."""
    dependencies = ["torch"]

    import torch


    class TinyViT(torch.nn.Module):
        def __init__(self, embed_dim=20, patch_size=14):
            super().__init__()
            self.embed_dim = embed_dim
            self.patch_embed = torch.nn.Conv2d(3, embed_dim, patch_size, patch_size)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.mask_token = torch.nn.Parameter(torch.zeros(1, embed_dim))
            self.norm = torch.nn.LayerNorm(embed_dim)
            self.last_input = None

        def forward(self, x):
            assert x.shape[-2:] == (224, 224), f"DINOv2 expects 224x224 inputs, got {tuple(x.shape)}"
            self.last_input = x.detach().clone()
            tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
            cls = self.cls_token[:, 0] + torch.tanh(tokens).mean(1) + tokens.square().mean(1)
            return self.norm(cls)


    def dinov2_vitl14(*, pretrained=True, **kwargs):
        if pretrained:
            raise RuntimeError("stand-in hub repo: pretrained=True would download weights")
        return TinyViT(**kwargs)
''')


def write_dinov2_standin(directory: str, seed: int = 0) -> tuple[str, str]:
    """(repo_dir, weights_path): a local hub repo with `hubconf.py` and a matching `dinov2_vitl14_pretrain.pth`."""
    repo = os.path.join(directory, "dinov2")
    os.makedirs(repo, exist_ok=True)
    with open(os.path.join(repo, "hubconf.py"), "w") as f:
        f.write(HUBCONF)
    torch.manual_seed(seed)
    model = torch.hub.load(repo, "dinov2_vitl14", source="local", pretrained=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    weights = os.path.join(directory, "dinov2_vitl14_pretrain.pth")
    torch.save(model.state_dict(), weights)
    return repo, weights

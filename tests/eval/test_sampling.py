"""Seed splitting across ranks and prefix-shared multi-sampler generation, checked against `ect.generate`."""

import numpy as np
import pytest
import torch

from ect_scale.config.base import ConfigError
from ect_scale.ect import generate
from ect_scale.eval.sampling import SamplerSpec, consistency_spec, rank_batches, sample_many


@pytest.mark.parametrize("n,batch", [(10, 3), (64, 8), (5, 16), (1000, 64)])
def test_rank_batches_partition_is_independent_of_world_size(n, batch):
    reference = rank_batches(n, batch, 0, 1)
    assert np.array_equal(np.concatenate(reference), np.arange(n))
    for world in (2, 3, 8):
        per_rank = [rank_batches(n, batch, r, world) for r in range(world)]
        flat = sorted((tuple(b) for rank in per_rank for b in rank))
        assert flat == sorted(tuple(b) for b in reference)  # Same batches, only distributed differently.
        sizes = [sum(len(b) for b in rank) for rank in per_rank]
        assert max(sizes) - min(sizes) <= batch  # Balanced to within one batch.


def test_sample_many_equals_generate_for_every_sampler(tiny_net):
    net = tiny_net(seed=3).eval()
    seeds = [5, 6, 11]
    specs = [
        consistency_spec(1, [1.5, 0.4]),
        consistency_spec(2, [1.5, 0.4]),
        consistency_spec(3, [1.5, 0.4]),
        SamplerSpec(t_mid=(0.7,), label="2step@0.7"),
        SamplerSpec(kind="heun", num_steps=2),
    ]
    out = sample_many(net, seeds, specs, "cpu")
    assert list(out) == ["1step", "2step", "3step", "2step@0.7", "heun2"]
    for spec in specs[:4]:
        expected = generate(net, seeds, "cpu", t_mid=spec.t_mid)
        torch.testing.assert_close(out[spec.name], expected, rtol=0, atol=0)  # Bitwise: same ops, same draws.
    torch.testing.assert_close(out["heun2"], generate(net, seeds, "cpu", sampler="heun", num_steps=2), rtol=0, atol=0)
    assert not torch.equal(out["2step"], out["2step@0.7"])


def test_spec_names_errors_and_descriptions():
    assert consistency_spec(2, [0.98]).describe() == {
        "sampler": "consistency",
        "steps": 2,
        "t_max": 80.0,
        "t_mid": [0.98],
        "nfe": 2,
    }
    assert SamplerSpec(kind="heun").nfe == 63
    with pytest.raises(ConfigError, match=r"ect\.t_mid: a 3-step sampler needs 2 intermediate times"):
        consistency_spec(3, [1.0])
    with pytest.raises(ConfigError, match="must decrease"):
        consistency_spec(3, [0.5, 1.0])
    with pytest.raises(ConfigError, match="must decrease within"):
        consistency_spec(2, [90.0])
    with pytest.raises(ValueError, match="unique"):
        sample_many(None, [0], [SamplerSpec(), SamplerSpec()], "cpu")

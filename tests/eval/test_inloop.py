"""In-loop evaluator: FID of each net at 1 and 2 steps checked against an independent computation, grids and
scalars in TensorBoard, eval mode, the same results on every rank and for any world size, config errors."""

import numpy as np
import pytest
import torch

from ect_scale.config import ECTConfig, EvalConfig, from_dict
from ect_scale.config.base import ConfigError
from ect_scale.data.encoders import PixelEncoder
from ect_scale.ect import generate
from ect_scale.eval.detectors import InceptionV3Detector
from ect_scale.eval.inloop import InLoopEvaluator, make_grid
from ect_scale.eval.refs import save_reference
from ect_scale.eval.stats import GaussianStats, frechet_distance
from tests.distributed import run_ranks
from tests.eval.test_pipeline import tiny_pixel_net


def _reference(path, inception, n=40):
    """Reference statistics of random 'dataset' images through the same stand-in detector."""
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, size=(n, 3, 16, 16), dtype=np.uint8))
    feats = InceptionV3Detector(inception)(images).double().numpy()
    save_reference(path, {"fid": GaussianStats(mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), num=n)})
    return path


def _config(ref, detector_files, **kw):
    raw = {
        "interval_nimg": 1000,
        "num_samples": 10,
        "batch_gpu": 4,
        "grid_size": 2,
        "ref_stats": ref,
        "inception_path": detector_files["inception"],
        **kw,
    }
    return from_dict(EvalConfig, raw, "eval")


def test_inloop_fid_matches_independent_computation_and_writes_tensorboard(tmp_path, detector_files):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    ref = _reference(str(tmp_path / "ref.pkl"), detector_files["inception"])
    cfg = _config(
        ref,
        detector_files,
        metrics=["fid", "fd_dinov2"],
        dinov2_repo=detector_files["dinov2_repo"],
        dinov2_path=detector_files["dinov2_weights"],
    )
    from ect_scale.eval.refs import load_reference

    reference = load_reference(ref)
    reference.stats["fd_dinov2"] = GaussianStats(mu=np.zeros(20), sigma=np.eye(20), num=2)  # For the FD_DINOv2 path.
    evaluator = InLoopEvaluator(cfg, ECTConfig(), PixelEncoder(), "cpu", reference=reference)
    nets = {"ema-a": tiny_pixel_net(1, dropout=0.5).train(), "ema-b": tiny_pixel_net(2).eval()}  # a: dropout on.
    writer = SummaryWriter(str(tmp_path / "tb"))
    results = evaluator.run(nets, nimg=25_000, writer=writer)
    writer.close()
    assert nets["ema-a"].training and not nets["ema-b"].training  # Modes restored after eval-mode sampling.
    expected_keys = {f"{m}/{s}/{n}" for m in ("FID", "FD_DINOv2") for s in ("1step", "2step") for n in nets}
    assert set(results) == expected_keys | {"Timing/eval_sec"}

    det = InceptionV3Detector(detector_files["inception"])
    for name, net in nets.items():  # Independently, in eval mode: ect.generate -> decode -> numpy stats -> FD.
        for steps, t_mid in ((1, []), (2, [1.526])):
            with torch.no_grad():
                x = generate(net.eval(), list(range(10)), "cpu", t_mid=t_mid)
            feats = det(PixelEncoder().decode(x)).double().numpy()
            r = reference.stats["fid"]
            fid = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), r.mu, r.sigma)
            assert results[f"FID/{steps}step/{name}"] == pytest.approx(fid, rel=1e-6)
    assert results["FID/1step/ema-a"] != results["FID/1step/ema-b"]

    grids = evaluator.last_grids
    assert set(grids) == {f"Samples/{s}/{n}" for s in ("1step", "2step") for n in nets}
    # 2 x 2 samples of 16 px, magnified 2x to 32 px cells, with 2 px grey gutters around and between them.
    assert all(
        g.dtype == torch.uint8 and tuple(g.shape) == (3, 70, 70) and (g[:, 0] == 128).all() for g in grids.values()
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(results)
    assert events.Scalars("FID/2step/ema-b")[0].step == 25  # kimg.
    assert events.Scalars("FID/2step/ema-b")[0].value == pytest.approx(results["FID/2step/ema-b"], rel=1e-6)
    assert len(events.Tags()["images"]) == 4


def test_due_state_dict_and_grid_layout(tmp_path, detector_files):
    ref = _reference(str(tmp_path / "ref.npz"), detector_files["inception"])
    evaluator = InLoopEvaluator(_config(ref, detector_files, grid_size=0), ECTConfig(), PixelEncoder(), "cpu")
    assert evaluator.every.due(999, 1001) and not evaluator.every.due(1001, 1999) and evaluator.every.due(1999, 2000)
    evaluator.history.append({"nimg": 1000, "FID/1step/x": 3.0})
    other = InLoopEvaluator(_config(ref, detector_files, grid_size=0), ECTConfig(), PixelEncoder(), "cpu")
    other.load_state_dict(evaluator.state_dict())
    assert other.history == evaluator.history
    imgs = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    grid = make_grid(imgs, cols=3)
    assert grid.shape == (3, 4, 6) and grid[0, 0, 4] == 2 and grid[0, 2, 2] == 4 and grid[0, 3, 5] == 0


def test_config_errors_name_the_option(tmp_path, detector_files):
    with pytest.raises(ConfigError, match=r"eval\.ref_stats: is required for in-loop evaluation"):
        from_dict(EvalConfig, {"interval_nimg": 1000, "inception_path": "x.pt"}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.inception_path: is required for metric 'fid'"):
        from_dict(EvalConfig, {"interval_nimg": 1000, "ref_stats": "r.pkl"}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.dinov2_repo/eval\.dinov2_path"):
        from_dict(EvalConfig, {"interval_nimg": 1000, "ref_stats": "r.pkl", "metrics": ["fd_dinov2"]}, "eval")
    from_dict(EvalConfig, {"interval_nimg": 0}, "eval")  # Off: no files needed.
    ref = _reference(str(tmp_path / "ref.pkl"), detector_files["inception"])
    with pytest.raises(ConfigError, match=r"ect\.t_mid: a 3-step sampler needs 2 intermediate times"):
        InLoopEvaluator(_config(ref, detector_files, steps=[1, 3]), ECTConfig(), PixelEncoder(), "cpu")


def _inloop_worker(rank, world_size, ref, inception):
    import torch.distributed as dist

    if world_size > 1:
        dist.init_process_group("gloo")
    cfg = from_dict(
        EvalConfig,
        {
            "interval_nimg": 1000,
            "num_samples": 11,
            "batch_gpu": 3,
            "grid_size": 2,
            "ref_stats": ref,
            "inception_path": inception,
        },
        "eval",
    )
    evaluator = InLoopEvaluator(cfg, ECTConfig(t_mid=[0.9]), PixelEncoder(), "cpu")
    results = evaluator.run({"ema": tiny_pixel_net(3)}, nimg=4096)
    results.pop("Timing/eval_sec")
    return results, sorted(evaluator.last_grids)


def test_inloop_same_results_on_every_rank_and_world_size(tmp_path, detector_files):
    ref = _reference(str(tmp_path / "ref.pkl"), detector_files["inception"])
    args = (ref, detector_files["inception"])
    ((one, grids_one),) = run_ranks(_inloop_worker, 1, args=args, timeout=180)
    two = run_ranks(_inloop_worker, 2, args=args, timeout=180)
    for results, _ in two:
        assert set(results) == set(one)
        for k, v in one.items():
            assert results[k] == pytest.approx(v, rel=1e-9, abs=1e-9)
    assert grids_one == two[0][1] == ["Samples/1step/ema", "Samples/2step/ema"] and two[1][1] == []  # Rank 0 only.

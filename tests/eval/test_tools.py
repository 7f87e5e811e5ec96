"""launchers/evaluate.py, tools/fid_ref.py, tools/search_tmid.py and tools/bench_fid.py end to end on CPU:
single-process runs in-process, multi-rank runs under torchrun (gloo), stand-in detectors from disk."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from ect_scale.eval.detectors import InceptionV3Detector
from ect_scale.eval.refs import load_reference
from tests.conftest import REPO
from tests.eval.test_pipeline import tiny_pixel_net


def _module(relpath):
    spec = importlib.util.spec_from_file_location(relpath.replace("/", "_")[:-3], os.path.join(REPO, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _torchrun(relpath, args, nproc=2, timeout=240):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        os.path.join(REPO, relpath),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, detector_files):
    """A folder of PNG 'dataset' images, its reference statistics, and a tiny-pixel network file."""
    from ect_scale.networks.netfile import save_network_file

    root = tmp_path_factory.mktemp("tools")
    rng = np.random.default_rng(0)
    for i in range(14):  # EDM2's dataset_tool layout: 00000/img00000000.png, ...
        folder = root / "data" / f"{i // 10:05d}"
        os.makedirs(folder, exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i:08d}.png")
    net = tiny_pixel_net(5)
    save_network_file(
        str(root / "ema-0.050.safetensors"),
        net.state_dict(),
        net.config,
        meta={"encoder": {"kind": "pixels"}, "nimg": 5_000_000, "ema": "power-0.050"},
    )
    fid_ref = _module("tools/fid_ref.py")
    assert (
        fid_ref.main(
            [
                "--data",
                str(root / "data"),
                "--out",
                str(root / "ref.pkl"),
                "--inception",
                detector_files["inception"],
                "--dinov2-repo",
                detector_files["dinov2_repo"],
                "--dinov2-weights",
                detector_files["dinov2_weights"],
                "--batch-gpu",
                "4",
                "--workers",
                "0",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    return {"root": root, "ref": str(root / "ref.pkl"), "net": str(root / "ema-0.050.safetensors"), **detector_files}


@pytest.mark.slow
def test_fid_ref_two_ranks_equal_one_rank_and_compare(workspace, capsys):
    ws = workspace
    one = load_reference(ws["ref"])
    assert set(one.stats) == {"fid", "fd_dinov2"} and one.stats["fid"].num == 14 and one.meta == {"num_images": 14}
    _torchrun(
        "tools/fid_ref.py",
        [
            "--data",
            str(ws["root"] / "data"),
            "--out",
            str(ws["root"] / "ref2.npz"),
            "--inception",
            ws["inception"],
            "--batch-gpu",
            "4",
            "--workers",
            "1",
        ],
    )
    two = load_reference(str(ws["root"] / "ref2.npz"))
    np.testing.assert_allclose(two.stats["fid"].mu, one.stats["fid"].mu, rtol=1e-12)
    np.testing.assert_allclose(two.stats["fid"].sigma, one.stats["fid"].sigma, rtol=1e-10, atol=1e-14)
    images = torch.stack(
        [
            torch.from_numpy(np.array(PIL.Image.open(p).convert("RGB"))).permute(2, 0, 1)
            for p in sorted((ws["root"] / "data").rglob("*.png"))
        ]
    )
    feats = InceptionV3Detector(ws["inception"])(images).double().numpy()  # Directly, in one process.
    np.testing.assert_allclose(two.stats["fid"].mu, feats.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.stats["fid"].sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-9)
    assert two.meta["num_images"] == 14 and two.meta["resolution"] == [16, 16]
    fid_ref = _module("tools/fid_ref.py")
    capsys.readouterr()
    assert (
        fid_ref.main(
            [
                "--data",
                str(ws["root"] / "data"),
                "--compare",
                ws["ref"],
                "--inception",
                ws["inception"],
                "--workers",
                "0",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") :])  # After the "[ref] ..." status line.
    assert report["compare"]["fid"] == pytest.approx(0.0, abs=1e-9)


def test_fid_ref_from_a_data_package_source(workspace, capsys):
    pytest.importorskip("sklearn")
    fid_ref = _module("tools/fid_ref.py")
    out = workspace["root"] / "digits.npz"
    assert (
        fid_ref.main(
            [
                "--source",
                "sklearn-digits",
                "--resolution",
                "16",
                "--max-images",
                "30",
                "--out",
                str(out),
                "--inception",
                workspace["inception"],
                "--workers",
                "0",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    ref = load_reference(str(out))
    assert ref.stats["fid"].num == 30 and ref.meta["resolution"] == [16, 16] and ref.meta["data"] == "sklearn-digits"
    assert fid_ref.main(["--source", "sklearn-digits", "--out", str(out), "--inception", workspace["inception"]]) == 2
    assert "--resolution: required with --source" in capsys.readouterr().err


def _eval_args(ws, out, *extra):
    return [
        "--net",
        ws["net"],
        "--ref",
        ws["ref"],
        "--inception",
        ws["inception"],
        "--num-samples",
        "10",
        "--steps",
        "1,2",
        "--t-mid",
        "1.0",
        "--batch-gpu",
        "3",
        "--out",
        str(out),
        "--progress",
        "plain",
        *extra,
    ]


@pytest.mark.slow
def test_evaluate_launcher_json_tensorboard_and_world_size_invariance(workspace):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws = workspace
    evaluate = _module("launchers/evaluate.py")
    out1 = ws["root"] / "one.json"
    assert evaluate.main(_eval_args(ws, out1, "--repeats", "2", "--tensorboard", str(ws["root"] / "tb"))) == 0
    one = json.loads(out1.read_text())
    entry = one["networks"][0]
    assert entry["name"] == "ema-0.050" and entry["meta"]["ema"] == "power-0.050"
    assert [r["seeds"] for r in entry["repeats"]] == ["0-9", "10-19"]
    fid2 = entry["results"]["2step"]["fid"]
    assert len(fid2["values"]) == 2 and fid2["min"] == min(fid2["values"]) > 0
    assert entry["samplers"]["2step"]["t_mid"] == [1.0]
    assert one["reference"]["sha256"] == load_reference(ws["ref"]).sha256
    events = EventAccumulator(str(ws["root"] / "tb"))
    events.Reload()
    scalar = events.Scalars("Eval/FID/2step/ema-0.050")[0]
    assert scalar.step == 5000 and scalar.value == pytest.approx(fid2["min"], rel=1e-6)

    out2 = ws["root"] / "two.json"
    _torchrun("launchers/evaluate.py", _eval_args(ws, out2, "--repeats", "2"))
    two = json.loads(out2.read_text())
    assert two["world_size"] == 2
    for spec in ("1step", "2step"):
        a, b = entry["results"][spec]["fid"]["values"], two["networks"][0]["results"][spec]["fid"]["values"]
        np.testing.assert_allclose(b, a, rtol=1e-9)  # Same samples on any number of ranks.


def test_evaluate_launcher_fd_dinov2_once_fid_every_repeat(workspace, tmp_path):
    ws = workspace
    evaluate = _module("launchers/evaluate.py")
    out = tmp_path / "dino.json"
    assert (
        evaluate.main(
            [
                "--net",
                ws["net"],
                "--ref",
                ws["ref"],
                "--inception",
                ws["inception"],
                "--dinov2-repo",
                ws["dinov2_repo"],
                "--dinov2-weights",
                ws["dinov2_weights"],
                "--steps",
                "1",
                "--num-samples",
                "4",
                "--repeats",
                "2",
                "--out",
                str(out),
                "--progress",
                "none",
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())["networks"][0]["results"]["1step"]
    assert len(results["fid"]["values"]) == 2 and len(results["fd_dinov2"]["values"]) == 1  # As EDM2 reports.
    assert results["fd_dinov2"]["min"] > 0


def test_evaluate_launcher_takes_files_and_t_mid_from_a_run_config(workspace, tmp_path, capsys):
    import yaml

    ws = workspace
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"kind": "synthetic"},
                "ect": {"t_mid": [0.7]},
                "eval": {"ref_stats": ws["ref"], "inception_path": ws["inception"], "batch_gpu": 5},
            }
        )
    )
    evaluate = _module("launchers/evaluate.py")
    out = tmp_path / "cfg.json"
    assert (
        evaluate.main(
            [
                "--config",
                str(config),
                "--net",
                ws["net"],
                "--steps",
                "2",
                "--num-samples",
                "5",
                "--out",
                str(out),
                "--progress",
                "none",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["networks"][0]["samplers"]["2step"]["t_mid"] == [0.7]
    assert report["reference"]["path"] == ws["ref"] and report["detectors"]["fid"]["source"] == ws["inception"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"kind": "synthetic"}, "eval": {"batch_gpu": 0}}))
    assert evaluate.main(["--config", str(bad), "--net", ws["net"]]) == 2  # Reported as a user error.
    assert "eval.batch_gpu: must be >= 1" in capsys.readouterr().err


def test_evaluate_launcher_errors_name_the_fix(workspace, tmp_path, capsys):
    ws = workspace
    evaluate = _module("launchers/evaluate.py")
    assert evaluate.main(["--net", ws["net"], "--inception", ws["inception"]]) == 2
    assert "--ref: reference statistics are required" in capsys.readouterr().err
    assert (
        evaluate.main(["--net", ws["net"], "--ref", ws["ref"], "--inception", str(tmp_path / "x.pt"), "--steps", "1"])
        == 2
    )
    err = capsys.readouterr().err
    assert "inception-2015-12-05.pt" in err and "nvlabs-fi-cdn.nvidia.com" in err
    assert evaluate.main(["--net", ws["net"], "--ref", ws["ref"], "--inception", ws["inception"], "--steps", "2"]) == 2
    assert "--t-mid: a 2-step sampler needs intermediate times" in capsys.readouterr().err
    assert (
        evaluate.main(
            [
                "--net",
                str(tmp_path / "missing.safetensors"),
                "--ref",
                ws["ref"],
                "--inception",
                ws["inception"],
                "--steps",
                "1",
                "--num-samples",
                "4",
            ]
        )
        == 2
    )
    assert "network file not found" in capsys.readouterr().err


def test_search_tmid_reports_the_best_value(workspace):
    ws = workspace
    search = _module("tools/search_tmid.py")
    out = ws["root"] / "tmid.json"
    assert (
        search.main(
            [
                "--net",
                ws["net"],
                "--ref",
                ws["ref"],
                "--inception",
                ws["inception"],
                "--values",
                "2.0,1.0,0.5",
                "--num-samples",
                "6",
                "--batch-gpu",
                "3",
                "--refine",
                "1",
                "--out",
                str(out),
                "--progress",
                "none",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    table = {row["t_mid"]: row["fid"] for row in report["table"]}
    assert len(table) == 3 + 4 and {2.0, 1.0, 0.5} <= set(table)
    assert report["best"]["fid"] == min(table.values()) and table[report["best"]["t_mid"]] == report["best"]["fid"]
    assert report["baseline_1step"] > 0 and len(set(table.values())) == len(table)
    assert search.log_grid("0.5:2:3") == pytest.approx([2.0, 1.0, 0.5])
    assert search.refine_around([2.0, 1.0, 0.5], 1.0, n=2) == pytest.approx([0.5 * 4 ** (1 / 3), 0.5 * 4 ** (2 / 3)])


@pytest.mark.slow
def test_bench_fid_driver_runs_torchrun_and_reports_json(workspace):
    pytest.importorskip("diffusers")
    args = [
        "--gpus",
        "1",
        "--preset",
        "tiny-latent",
        "--vae-config",
        "tiny",
        "--inception",
        workspace["inception"],
        "--num-samples",
        "8",
        "--batch-gpu",
        "4",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "bench_fid.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.rindex('{\n  "runs"') :])
    run = summary["runs"][0]
    assert run["gpus"] == 1 and run["num"] == 8 and run["nfe"] == 2
    assert set(run["stages_rank0"]) == {"sample", "decode", "fid"} and run["extrapolated_wall_50k_s"] > 0
    assert "extrapolated" in run["note"]

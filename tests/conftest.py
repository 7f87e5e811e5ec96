"""Shared test fixtures: small CPU threads, tiny network configs, deterministic seeds."""

import os

# Entry points run in-process here and the test session goes on: no stack dumps of a "finished" process
# (ect_scale.runtime.procs.arm_exit_watchdog; tests/runtime/test_procs.py arms it explicitly).
os.environ.setdefault("ECT_SCALE_EXIT_WATCHDOG_S", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

# Up to 2 threads per test process, and no more than the cores each xdist worker has (`-n 2` on 2 cores: 1 each;
# more would only make the workers take turns on the cores).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest_plugins = ["pytester", "tests.durations"]  # tests.durations: the `slow` marker checked against the run.


def load_script(relpath: str):
    """Import a script of `tools/` or `launchers/` (e.g. "tools/make_shards.py") as a module, without touching
    sys.path. Loaded once per test session; the module is registered under its file name."""
    import importlib.util
    import sys

    name = os.path.splitext(os.path.basename(relpath))[0]
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == os.path.join(REPO, relpath):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_config():
    from ect_scale.config import NetworkConfig, from_dict

    def make(**overrides):
        return from_dict(NetworkConfig, {"preset": "tiny-latent", **overrides}, "network")

    return make


@pytest.fixture
def tiny_net(tiny_config):
    from ect_scale.networks import build_network

    def make(seed=0, **overrides):
        torch.manual_seed(seed)
        net = build_network(tiny_config(**overrides))
        with torch.no_grad():  # Non-zero gains so the residual/output paths matter in tests.
            for _name, p in net.named_parameters():
                if p.ndim == 0:
                    p.fill_(0.7)
        return net

    return make


# ----------------------------------------------------------------------------
# A real S3-protocol server on loopback (moto's ThreadedMotoServer, as s3fs's own suite uses). No in-process mocks:
# s3fs (aiobotocore) and DataLoader worker processes talk to it over HTTP.


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server once per session; yields its endpoint URL. Credentials are fake but required."""
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "FSSPEC_S3_ENDPOINT_URL",
            "AWS_PROFILE",
            "BOTO_CONFIG",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        FSSPEC_S3_ENDPOINT_URL=endpoint,
        BOTO_CONFIG="/dev/null",
    )
    os.environ.pop("AWS_PROFILE", None)
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)  # fsspec reads FSSPEC_* at import; refresh for this process.
    try:
        yield endpoint
    finally:
        server.stop()
        fsspec.config.conf.pop("s3", None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the loopback server; yields 's3://<name>'. Clears s3fs's instance cache."""
    import uuid

    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield f"s3://{name}"
    s3fs.S3FileSystem.clear_instance_cache()


def pytest_collection_modifyitems(items):
    """Files with slow tests first (the order within a file kept): pytest-xdist (`-n 2`, whole files per worker,
    `--dist loadfile` in pyproject.toml) then ends on short files instead of one worker finishing a long one."""
    heavy = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in heavy)


@pytest.fixture
def proxy(s3_server):
    """A fault-injecting TCP proxy in front of the loopback S3 server (tests/runtime/store_proxy.py)."""
    from tests.runtime.store_proxy import StoreProxy

    p = StoreProxy(s3_server)
    yield p
    p.close()

"""`entry.run`, the wrapper of every launcher and tool: one line and code 2 for expected failures, the traceback in
a log file, the traceback kept (and code 1) for bugs."""

import os

from ect_scale.config import ConfigError
from ect_scale.data import StorageError
from ect_scale.runtime import entry


def _fail(exc):
    def body():
        raise exc

    return body


def test_an_expected_failure_is_one_line_and_the_traceback_goes_to_the_log(tmp_path, capsys):
    def body():
        entry.set_log_dir(str(tmp_path / "run" / "logs"))
        raise StorageError("cannot read s3://b/manifest.json: the S3 endpoint is unreachable. Fix: check the endpoint")

    assert entry.run(body, program="test") == 2
    err = capsys.readouterr().err.splitlines()
    log = tmp_path / "run" / "logs" / "error-rank0.log"
    assert err == [
        "error: cannot read s3://b/manifest.json: the S3 endpoint is unreachable. Fix: check the endpoint",
        f"  (full log: {log})",
    ]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "StorageError" in text


def test_an_unwritable_log_dir_falls_back_to_a_temporary_one(tmp_path, capsys):
    (tmp_path / "file").write_text("")

    def body():
        entry.set_log_dir(str(tmp_path / "file" / "logs"))  # A file in the way: cannot be created.
        raise FileNotFoundError(2, "No such file or directory", "/data/init.safetensors")

    assert entry.run(body, program="test") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot access /data/init.safetensors: No such file or directory. Fix:")
    path = err.split("(full log: ")[1].split(")")[0]
    assert os.path.isfile(path) and not path.startswith(str(tmp_path))


def test_configuration_errors_need_no_log(tmp_path, capsys):
    assert entry.run(_fail(ConfigError("train.batch_gpuu: unknown option. Fix: use batch_gpu")), program="test") == 2
    assert capsys.readouterr().err == "error: train.batch_gpuu: unknown option. Fix: use batch_gpu\n"


def test_a_bug_keeps_its_traceback(tmp_path, capsys):
    def body():
        entry.set_log_dir(str(tmp_path / "logs"))
        return 1 // 0

    assert entry.run(body, program="test") == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert "error: unexpected ZeroDivisionError: integer division or modulo by zero" in err
    assert "ZeroDivisionError" in (tmp_path / "logs" / "error-rank0.log").read_text()


def test_success_returns_the_body_code(capsys):
    assert entry.run(lambda: 0, program="test") == 0 and capsys.readouterr().err == ""


def test_the_package_logs_show_on_stdout_even_when_stdout_is_replaced(capsys):
    import contextlib
    import io
    import logging

    logger = logging.getLogger("ect_scale")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    with contextlib.redirect_stdout(io.StringIO()):  # The stdout of the moment the handler is installed ...
        assert entry.run(lambda: 0, program="test") == 0
    logging.getLogger("ect_scale.data").info("data: exact resume at epoch 0, batch 4/56")  # ... is gone now.
    assert capsys.readouterr().out == "data: exact resume at epoch 0, batch 4/56\n"

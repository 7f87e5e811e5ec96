"""The outage policy: what counts as an outage, riding one out (logged once at its start and once at its end, time
counted), and the one-line error once it lasts longer than the window."""

import errno
import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from ect_scale.runtime.outage import OutageClock, StoreOutageError, is_missing, outage_reason, ride_out


def _client_error(status: int, code: str) -> OSError:
    """What s3fs raises for an error answer: a translated OSError caused by botocore's ClientError."""
    cause = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    translated = FileNotFoundError(code) if status == 404 else OSError(errno.EIO, code)
    translated.__cause__ = cause
    return translated


@pytest.mark.parametrize(
    "error, reason",
    [
        (EndpointConnectionError(endpoint_url="http://x"), "cannot connect"),
        (ReadTimeoutError(endpoint_url="http://x"), "read timeout"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection refused"),
        (OSError(errno.ECONNRESET, "reset"), "connection reset"),
        (_client_error(503, "SlowDown"), "HTTP 503 SlowDown"),
        (_client_error(500, "InternalError"), "HTTP 500 InternalError"),
        (_client_error(404, "NoSuchKey"), None),  # The store answered: missing, not out.
        (_client_error(403, "AccessDenied"), None),
        (PermissionError("denied"), None),
        (ValueError("bad tar header"), None),
    ],
)
def test_what_counts_as_an_outage(error, reason):
    assert outage_reason(error) == reason
    assert is_missing(error) == (isinstance(error, FileNotFoundError))


class _Flaky:
    """Fails `n` times with `error`, then returns "ok"."""

    def __init__(self, n: int, error: BaseException):
        self.n, self.error, self.calls = n, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.n:
            raise self.error
        return "ok"


def test_an_outage_is_ridden_out_logged_once_and_counted():
    lines = []
    clock = OutageClock("data (rank 0)", lines.append)
    fn = _Flaky(2, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    waits = []
    assert ride_out(fn, window_s=30, option="data.outage_window_s", clock=clock, what="x", sleep=waits.append) == "ok"
    assert fn.calls == 3 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0  # Back-off: 0.5 s, doubling.
    assert len(lines) == 2, lines
    assert lines[0].startswith("data (rank 0): the store is not answering (connection refused); retrying for up to 30")
    assert lines[1].startswith("data (rank 0): the store is back after ")
    assert clock.count() == 1 and 0 <= clock.lost_sec() < 5
    assert ride_out(lambda: 1, window_s=30, option="o", clock=clock, what="x") == 1 and len(lines) == 2


def test_past_the_window_one_line_names_the_option_and_the_fix():
    clock = OutageClock("checkpoint store", lambda _: None)
    fn = _Flaky(100, _client_error(503, "ServiceUnavailable"))
    nap = lambda s: time.sleep(0.02)  # noqa: E731 - the window is real time; the back-off need not be
    with pytest.raises(StoreOutageError) as info:
        what, option = "uploading to s3://b/c", "checkpoint.outage_window_s"
        ride_out(fn, window_s=0.3, option=option, clock=clock, what=what, sleep=nap)
    text = str(info.value)
    assert "\n" not in text and text.startswith("uploading to s3://b/c: the store has not answered for ")
    assert "(HTTP 503 ServiceUnavailable: " in text and "longer than checkpoint.outage_window_s=0.3 s" in text
    assert info.value.fix.startswith("check that the store is up and reachable from this node; raise checkpoint.")
    assert fn.calls >= 2 and clock.lost_sec() > 0.25


def test_other_errors_pass_through_at_once():
    clock = OutageClock("data", lambda _: None)
    fn = _Flaky(1, _client_error(403, "AccessDenied"))
    with pytest.raises(OSError, match="AccessDenied"):
        ride_out(fn, window_s=30, option="o", clock=clock, what="x")
    assert fn.calls == 1 and clock.count() == 0


def test_an_outage_ends_when_the_store_answers_with_an_error():
    """A restart answers 404 (an outage while the canary is missing too), then the store is back and answers a real
    404: the outage ended there, and the next failure starts a new one (counted, logged)."""
    lines = []
    clock = OutageClock("checkpoint store", lines.append)
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    missing = FileNotFoundError("ckpts/ckpt-000000000008/COMPLETE")

    def restart_then_a_real_404():
        errors = iter([refused, missing])

        def fn():
            raise next(errors)

        with pytest.raises(FileNotFoundError):
            ride_out(fn, window_s=30, option="o", clock=clock, what="x", sleep=lambda _: time.sleep(0.01))

    restart_then_a_real_404()
    assert clock.count() == 1 and len(lines) == 2 and lines[1].startswith("checkpoint store: the store is back after ")
    lost = clock.lost_sec()
    time.sleep(0.02)
    assert clock.lost_sec() == lost  # No longer counting.
    restart_then_a_real_404()
    assert clock.count() == 2 and len(lines) == 4


def test_the_status_line_shows_the_time_lost():
    from ect_scale.train.monitor import status_line

    quiet = status_line(12.8, {"Loss/mean": 0.5, "Data/outage_sec": 0.0, "Checkpoint/outage_sec": 0.0}, 25.6)
    assert "outage" not in quiet
    line = status_line(12.8, {"Loss/mean": 0.5, "Data/outage_sec": 31.6, "Checkpoint/outage_sec": 20.2}, 25.6)
    assert "  outage 0:00:32  eta " in line  # The two overlap when one store serves both: the longer one.

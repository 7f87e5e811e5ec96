#!/usr/bin/env python3
"""A real S3-protocol server on loopback (moto's ThreadedMotoServer, as tests/conftest.py uses), in the foreground
until SIGTERM / SIGINT. For trying object-storage data and checkpoints on a machine without a cloud.

    python benchmarks/s3_server.py [--port 0] [--bucket NAME ...] [--endpoint-file F] [--quiet]

Prints `s3_server: endpoint http://127.0.0.1:PORT ...` once the server answers and the buckets exist (and writes
the endpoint URL to --endpoint-file then, for scripts to wait on), then one access-log line per request
(`127.0.0.1 - - [...] "GET /bucket/key HTTP/1.1" 206 -`) unless --quiet. Data lives in memory: it is gone when the
server stops. Clients need fake credentials and the endpoint (docs/data.md section 3):

    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \\
           FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:PORT BOTO_CONFIG=/dev/null

Needs moto, flask, flask-cors and boto3 (all in .whl/ for offline GPU hosts; benchmarks/setup_gpu.sh installs them).
"""

import argparse
import logging
import os
import signal
import sys
import threading

FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (keep it on loopback)")
    ap.add_argument("--port", type=int, default=0, help="port (0 = a free one)")
    ap.add_argument("--bucket", action="append", default=[], help="create this bucket at start (repeatable)")
    ap.add_argument("--endpoint-file", help="write the endpoint URL here once the server is ready")
    ap.add_argument("--quiet", action="store_true", help="no access log")
    args = ap.parse_args(argv)

    # werkzeug logs every request through the 'werkzeug' logger; send it to stdout, one line per request.
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING if args.quiet else logging.INFO)

    import werkzeug.serving
    from moto.server import ThreadedMotoServer

    werkzeug.serving._log_add_style = False  # Plain access-log lines (no ANSI colours) for log files and grep.

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()  # The real port when --port 0.
    endpoint = f"http://{host}:{port}"

    import boto3  # Create the buckets through the server's own HTTP API, as any client would.

    s3 = boto3.client("s3", endpoint_url=endpoint, **FAKE_CREDENTIALS)
    for name in args.bucket:
        s3.create_bucket(Bucket=name)
    print(
        f"s3_server: endpoint {endpoint} (buckets: {', '.join(args.bucket) or 'none'}; pid {os.getpid()}); "
        "SIGTERM or Ctrl-C stops it",
        flush=True,
    )
    if args.endpoint_file:
        tmp = args.endpoint_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(endpoint + "\n")
        os.replace(tmp, args.endpoint_file)  # Appears complete or not at all.

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop()
    print("s3_server: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A TCP proxy between S3 clients and an S3 server (moto on loopback) that a test switches between failure modes.

    proxy = StoreProxy(upstream="http://127.0.0.1:PORT")   # clients use proxy.endpoint
    proxy.set_mode("refuse")   # nothing listens: connection refused (a store that is down)
    proxy.set_mode("stall")    # connections are accepted, nothing is answered or forwarded (a hung store/network)
    proxy.set_mode("404")      # every request answers 404 NoSuchKey (a store restarting with its index not loaded)
    proxy.set_mode("503")      # every request answers 503 ServiceUnavailable (an overloaded store)
    proxy.set_mode("403")      # every request answers 403 AccessDenied (credentials rejected: not an outage)
    proxy.set_mode("pass")     # forward bytes both ways (the default)
    proxy.close()

Switching to refuse or an error mode drops every open connection, as a restarting server does, so pooled keep-alive
connections fail too; switching to stall freezes open connections where they are (no bytes move until the mode
changes). `proxy.requests` counts the requests answered in the error modes.

Also a script for the outage soak (benchmarks/fault_outage_soak.sh): it proxies until SIGTERM and takes its mode
from a file, polled every 0.2 s:

    python -m tests.runtime.store_proxy --upstream http://127.0.0.1:PORT --mode-file F [--port P] [--endpoint-file E]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Optional

MODES = ("pass", "refuse", "stall", "404", "503", "403")
_ERRORS = {
    "403": ("403 Forbidden", "AccessDenied", "Access Denied"),
    "404": ("404 Not Found", "NoSuchKey", "The specified key does not exist."),
    "503": ("503 Service Unavailable", "ServiceUnavailable", "Please reduce your request rate."),
}


class StoreProxy:
    def __init__(self, upstream: str, port: int = 0):
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        host, _, up_port = host_port.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(up_port))
        self.mode = "pass"
        self.requests = 0
        self._errors_left: Optional[int] = None  # answer_next: error answers left before "pass".
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: Optional[socket.socket] = None
        self._closed = False
        self.port = self._listen(port)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        with self._lock:
            old, self.mode = self.mode, mode
        if mode == old:
            return
        if mode in ("refuse", *_ERRORS) or old == "stall":
            self._drop_connections()
        if mode == "refuse":
            self._unlisten()
        elif self._listener is None:
            self._listen(self.port)

    def out_for(self, mode: str, seconds: float) -> None:
        """`mode` now, back to "pass" after `seconds` (in the background)."""
        self.set_mode(mode)
        threading.Timer(seconds, self.set_mode, ("pass",)).start()

    def answer_next(self, mode: str, n: int) -> None:
        """Answer the next `n` requests with error `mode`, then "pass" (a restart that ends between two requests)."""
        if mode not in _ERRORS:
            raise ValueError(f"mode {mode!r} is not one of {tuple(_ERRORS)}")
        with self._lock:
            self._errors_left = n  # Before the switch: no request meets the mode without being counted.
        self.set_mode(mode)

    def close(self) -> None:
        self._closed = True
        self._unlisten()
        self._drop_connections()

    # ------------------------------------------------------------------ sockets
    def _listen(self, port: int) -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # The port may still be held for a moment after the last listener closed.
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.1)
        else:
            sock.bind(("127.0.0.1", port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return sock.getsockname()[1]

    def _unlisten(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.update(socks)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # Closed (refuse mode or close()).
            if self._listener is not listener:
                client.close()
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            mode = self.mode
            if mode in _ERRORS and self._errors_left is not None:
                self._errors_left -= 1
                if self._errors_left <= 0:  # This connection is the last one answered with an error.
                    self.mode, self._errors_left = "pass", None
        if mode in _ERRORS:
            self._answer_errors(client, mode)
        elif mode == "stall":
            self._stall(client)
        else:
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                return
            upstream.settimeout(None)
            self._track(upstream)
            self._pump(client, upstream)

    def _stall(self, client: socket.socket) -> None:
        """Read and drop whatever comes, answer nothing, until the mode changes (then close)."""
        client.settimeout(0.2)
        while self.mode == "stall" and not self._closed:
            try:
                if not client.recv(1 << 16):
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        client.close()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Forward both ways; in stall mode, hold the bytes (nothing moves) until the mode changes."""
        peers = {a: b, b: a}
        try:
            while not self._closed:
                if self.mode == "stall":
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select(list(peers), [], [], 0.05)
                if self.mode == "stall":
                    continue  # Switched while waiting: leave the bytes where they are.
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    peers[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def _answer_errors(self, client: socket.socket, mode: str) -> None:
        """Answer the request with the mode's S3 error and close the connection (its body, if any, is dropped)."""
        status, code, message = _ERRORS[mode]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>proxy</RequestId></Error>"
        ).encode()
        buf = b""
        client.settimeout(5)
        try:
            while b"\r\n\r\n" not in buf:
                data = client.recv(1 << 16)
                if not data:
                    return
                buf += data
            client.settimeout(0.1)
            try:  # Take in what the client sends along (a PUT's body) so that it reads the answer, not a reset.
                while client.recv(1 << 16):
                    pass
            except socket.timeout:
                pass
            method = buf.split(b" ", 1)[0]
            self.requests += 1
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                "x-amz-request-id: proxy\r\nConnection: close\r\n\r\n"
            ).encode()
            client.sendall(head + (b"" if method == b"HEAD" else body))
        except OSError:
            return
        finally:
            client.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="the S3 server, e.g. http://127.0.0.1:9000")
    ap.add_argument("--mode-file", required=True, help=f"a file holding the mode ({', '.join(MODES)})")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0 = a free one)")
    ap.add_argument("--endpoint-file", help="write the proxy's endpoint URL here once it listens")
    args = ap.parse_args(argv)
    proxy = StoreProxy(args.upstream, args.port)
    if args.endpoint_file:
        with open(args.endpoint_file + ".tmp", "w") as f:
            f.write(proxy.endpoint + "\n")
        os.replace(args.endpoint_file + ".tmp", args.endpoint_file)
    print(f"store_proxy: {proxy.endpoint} -> {args.upstream}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.2):
        try:
            with open(args.mode_file) as f:
                mode = f.read().strip() or "pass"
        except FileNotFoundError:
            mode = "pass"
        if mode != proxy.mode:
            print(f"store_proxy: {time.strftime('%H:%M:%S')} mode {proxy.mode} -> {mode}", flush=True)
            proxy.set_mode(mode)
    proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

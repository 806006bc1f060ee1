"""Real servers on 127.0.0.1 for remote slides: an S3 (moto's server mode) and an HTTP server with Range.

What ``tests/test_remote.py`` and ``benchmarks/remote.py`` read slides from: moto runs in a
subprocess on a free port (``pip install 'moto[server]' boto3``, the test extras), the HTTP
server in a thread. Nothing here is needed to read real buckets.
"""

from __future__ import annotations

import http.server
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Credentials moto accepts (it checks none); the tests pass them like real ones.
KEY, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(free_actions: int | None = None) -> Iterator[str]:
    """An S3-compatible server in a subprocess; yields its endpoint URL, stops it after.

    With ``free_actions``, moto checks credentials after that many requests (the readiness
    probe is the first): the test's keys are unknown to it, so later requests are denied.
    """
    port = free_port()
    env = dict(os.environ)
    if free_actions is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(free_actions)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on port {port}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION)


def storage_options(endpoint: str) -> dict:
    """fsspec's S3 options for the server (what a user passes to `open_slide`)."""
    return {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points the CLI (s3fs, botocore) at the server."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION}


@contextmanager
def s3_environment(endpoint: str) -> Iterator[None]:
    """`s3_env` set in this process for the block, then the environment as it was.

    s3fs keeps one filesystem per set of options, and the environment is not among them: a
    filesystem made for an earlier server would still point at it. Its cache is cleared on
    the way in and out, so each server's block reads from that server.
    """
    import s3fs

    saved = {k: os.environ.get(k) for k in s3_env(endpoint)}
    os.environ.update(s3_env(endpoint))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


def upload(client, bucket: str, local: Path, key: str) -> str:
    """Upload a file or a folder (a zarr store) under ``key``; the ``s3://`` URL of the upload."""
    if local.is_dir():
        for folder, _, files in os.walk(local):
            for name in files:
                path = Path(folder) / name
                client.upload_file(str(path), bucket, f"{key}/{path.relative_to(local).as_posix()}")
    else:
        client.upload_file(str(local), bucket, key)
    return f"s3://{bucket}/{key}"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with ``Range: bytes=a-b`` support (206 answers with exactly the range)."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def send_head(self):
        time.sleep(self.server.latency)
        path = Path(self.translate_path(self.path))
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not path.is_file() or match is None:
            return super().send_head()
        size = path.stat().st_size
        start = int(match[1])
        end = min(int(match[2]) if match[2] else size - 1, size - 1)
        if start >= size:
            self.send_error(416, "Range Not Satisfiable")
            return None
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)


class _Server(http.server.ThreadingHTTPServer):
    #: A client fetches a region's tiles concurrently (~100 connections at once): with the
    #: default backlog of 5, refused SYNs wait out TCP retransmits (seconds per request).
    request_queue_size = 256
    #: Seconds every answer waits before its first byte (`range_http_server`'s ``latency``).
    latency = 0.0


@contextmanager
def range_http_server(root: Path, latency: float = 0.0) -> Iterator[str]:
    """An HTTP server over ``root`` with Range support, in a thread; yields its base URL.

    ``latency``: seconds each request waits before it is answered (concurrent requests wait
    side by side), as a real object store's time to first byte: loopback has none, and
    without it a client that sends one request at a time looks as fast as one that sends
    them together.
    """

    def handler(*args, **kwargs):
        return _RangeHandler(*args, directory=str(root), **kwargs)

    server = _Server(("127.0.0.1", 0), handler)
    server.latency = latency
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

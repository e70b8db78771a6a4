"""download(): resume, retries, checksums and clear errors, against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import logging
import socket
import threading
from pathlib import Path

import pytest

from vprflow.datasets.download import DownloadError, download, known_files, known_url

FAST = {"backoff": 0.01, "timeout": 5.0}


class LoopbackServer:
    """An HTTP server on 127.0.0.1, in a thread, serving ``files`` (URL path -> bytes).

    Supports ``Range: bytes=N-``. ``script[path]`` lists what the next requests for a path
    get instead of a normal answer, one entry per request: ``"cut"`` (headers for the
    whole body, then half of it and a hang-up), ``"500"``. Paths not in ``files`` get 404.
    ``ignore_range`` makes it answer every request with the whole file (200).
    ``requests`` records (path, Range header or None) for each request.
    """

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.script: dict[str, list[str]] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def requests_for(self, path: str) -> list[str | None]:
        return [range_header for requested, range_header in self.requests if requested == path]

    def _handler_class(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                action = server.script.get(self.path, []).pop(0) if server.script.get(self.path) else None
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                elif action == "500":
                    self.send_error(500)
                elif action == "cut":
                    self._send(200, {"Content-Length": str(len(body))}, body[: len(body) // 2])
                elif range_header and not server.ignore_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self._send(416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"}, b"")
                    else:
                        self._send(
                            206,
                            {
                                "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                                "Content-Length": str(len(body) - start),
                            },
                            body[start:],
                        )
                else:
                    self._send(200, {"Content-Length": str(len(body))}, body)

            def _send(self, status: int, headers: dict[str, str], sent: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(sent)
                self.close_connection = True

        return Handler


PAYLOAD = bytes(range(256)) * 400  # 100 KiB


@pytest.fixture
def server():
    with LoopbackServer({"/data.bin": PAYLOAD}) as running:
        yield running


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_writes_the_file_and_checks_it(server, tmp_path):
    dest = tmp_path / "sub" / "data.bin"
    assert download(f"{server.url}/data.bin", dest, sha256=sha256(PAYLOAD), **FAST) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert server.requests_for("/data.bin") == [None]


def test_cut_transfer_is_resumed_with_a_range_request(server, tmp_path):
    server.script["/data.bin"] = ["cut"]
    dest = tmp_path / "data.bin"
    download(f"{server.url}/data.bin", dest, sha256=sha256(PAYLOAD), chunk=4096, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests_for("/data.bin") == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    download(f"{server.url}/data.bin", dest, sha256=sha256(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests_for("/data.bin") == ["bytes=1000-"]


def test_complete_partial_file_is_not_downloaded_again(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    download(f"{server.url}/data.bin", tmp_path / "data.bin", sha256=sha256(PAYLOAD), **FAST)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert server.requests_for("/data.bin") == [f"bytes={len(PAYLOAD)}-"]  # answered 416


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.script["/data.bin"] = ["cut"]
    server.ignore_range = True
    dest = tmp_path / "data.bin"
    download(f"{server.url}/data.bin", dest, sha256=sha256(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD  # rewritten, not appended to the first half
    assert server.requests_for("/data.bin")[1] is not None


def test_server_errors_are_retried(server, tmp_path):
    server.script["/data.bin"] = ["500", "500"]
    download(f"{server.url}/data.bin", tmp_path / "data.bin", sha256=sha256(PAYLOAD), **FAST)
    assert len(server.requests_for("/data.bin")) == 3


def test_persistent_server_errors_give_up_after_the_retries(server, tmp_path):
    server.script["/data.bin"] = ["500"] * 10
    with pytest.raises(DownloadError, match="failed after 3 attempts"):
        download(f"{server.url}/data.bin", tmp_path / "data.bin", retries=2, **FAST)
    assert len(server.requests_for("/data.bin")) == 3
    assert not (tmp_path / "data.bin").exists()


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    url = f"{server.url}/data.bin"
    with pytest.raises(DownloadError) as error:
        download(url, tmp_path / "data.bin", sha256=sha256(b"something else"), **FAST)
    assert url in str(error.value) and "sha256" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_md5_mismatch_is_refused_too(server, tmp_path):
    with pytest.raises(DownloadError, match="md5"):
        download(f"{server.url}/data.bin", tmp_path / "data.bin", md5=hashlib.md5(b"x").hexdigest(), **FAST)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_fails_at_once_naming_the_url(server, tmp_path):
    url = f"{server.url}/missing.tgz"
    with pytest.raises(DownloadError) as error:
        download(url, tmp_path / "missing.tgz", **FAST)
    assert url in str(error.value) and "404" in str(error.value)
    assert server.requests_for("/missing.tgz") == [None]
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_says_offline_and_where_to_put_the_file(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError) as error:
        download(url, dest, retries=1, **FAST)
    message = str(error.value)
    assert url in message and "offline" in message and str(dest) in message


def test_existing_file_is_checked_not_downloaded(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    with pytest.raises(DownloadError, match="delete it"):
        download(f"{server.url}/data.bin", dest, sha256=sha256(PAYLOAD), **FAST)
    assert dest.read_bytes() == b"stale"
    assert server.requests == []


def test_unpinned_download_warns(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vprflow"):
        download(f"{server.url}/data.bin", tmp_path / "data.bin", **FAST)
    assert "no checksum pinned" in caplog.text


def test_known_files_table():
    files = known_files()
    assert {
        "roxford5k/oxbuild_images-v1.tgz",
        "roxford5k/gnd_roxford5k.pkl",
        "rparis6k/paris_1-v1.tgz",
        "rparis6k/paris_2-v1.tgz",
        "rparis6k/gnd_rparis6k.pkl",
    } <= set(files)
    for known in files.values():
        assert known.url.startswith(("http://", "https://"))
        assert known.url.endswith(Path(known.name).name)
        assert known.sha256 is None or len(known.sha256) == 64
    assert known_url("rparis6k/paris_1-v1.tgz", "http://mirror/x/") == "http://mirror/x/rparis6k/paris_1-v1.tgz"

"""Downloading dataset files: resumable, retried, checksummed and atomic.

A download is written to ``<dest>.part`` and renamed to ``dest`` only once it is complete
and its checksum matches, so a file at ``dest`` is always whole. An interrupted transfer
resumes from the ``.part`` file with an HTTP Range request, on the next attempt or the
next run. HTTP goes through ``urllib.request`` only.

Known files (``checksums.tsv`` beside this module) are keyed by a name that doubles as
their path on a *mirror*: with ``mirror="https://example.org/data"`` the file
``roxford5k/gnd_roxford5k.pkl`` is fetched from
``https://example.org/data/roxford5k/gnd_roxford5k.pkl`` instead of its official host.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from ..errors import InputError
from ..logs import log

USER_AGENT = "vprflow (dataset download)"
CHECKSUMS_TABLE = "checksums.tsv"
NOT_PINNED = "-"


class DownloadError(InputError):
    """A file could not be downloaded; the message names the URL and the destination."""


class _RetryableFailure(Exception):
    """An attempt that failed in a way another attempt may fix."""

    def __init__(self, reason: str, reached_server: bool):
        super().__init__(reason)
        self.reached_server = reached_server


@dataclass(frozen=True)
class KnownFile:
    name: str
    url: str
    sha256: str | None  # None: not pinned (the file could not be checksummed when listed)


def known_files() -> dict[str, KnownFile]:
    """The files listed in ``checksums.tsv`` (columns name, url, sha256; ``-`` = not pinned)."""
    table = resources.files(__package__).joinpath(CHECKSUMS_TABLE)
    files: dict[str, KnownFile] = {}
    lines = table.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["name", "url", "sha256"]:
        raise InputError(f"{CHECKSUMS_TABLE}: first line must be the header name<TAB>url<TAB>sha256")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise InputError(f"{CHECKSUMS_TABLE} line {number}: expected 3 tab-separated fields, got {len(fields)}")
        name, url, sha256 = fields
        if sha256 != NOT_PINNED and not _is_hex_digest(sha256, 64):
            raise InputError(f"{CHECKSUMS_TABLE} line {number}: sha256 of {name} must be 64 hex digits or '-'")
        if name in files:
            raise InputError(f"{CHECKSUMS_TABLE} line {number}: {name} is listed twice")
        files[name] = KnownFile(name, url, None if sha256 == NOT_PINNED else sha256.lower())
    return files


def known_url(name: str, mirror: str | None = None) -> str:
    """URL of the known file ``name``: its official one, or ``<mirror>/<name>``."""
    files = known_files()
    if name not in files:
        raise InputError(f"{name}: not a file listed in {CHECKSUMS_TABLE}")
    return files[name].url if mirror is None else f"{mirror.rstrip('/')}/{name}"


def download_known(name: str, dest: str | Path, mirror: str | None = None, **options) -> Path:
    """Download the known file ``name`` to ``dest``, checked against its pinned sha256."""
    url = known_url(name, mirror)
    return download(url, dest, sha256=known_files()[name].sha256, **options)


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    md5: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``sha256``/``md5``: expected digests (hex); without either the file is not verified
    and a warning says so. An existing ``dest`` is checked, not downloaded again.
    Connection errors, timeouts, cut transfers and HTTP 408/429/5xx are retried up to
    ``retries`` times, waiting ``backoff * 2**n`` seconds; an attempt that received
    more bytes than any before resets the count, so a long download on a flaky link
    keeps going. Other HTTP errors (404, 403, ...) fail at once.
    """
    dest = Path(dest)
    expected = {algorithm: digest.lower() for algorithm, digest in (("sha256", sha256), ("md5", md5)) if digest}
    if dest.exists():
        mismatch = _digest_mismatch(dest, expected)
        if mismatch:
            raise DownloadError(f"{dest} exists but {mismatch} (expected for {url}); delete it to download it again")
        log.info("%s already present", dest)
        return dest
    if not expected:
        log.warning("%s: no checksum pinned, the download will not be verified", url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    failures = 0
    largest = _size(part)  # progress = more bytes than ever before, so the loop ends even if restarts repeat
    while True:
        try:
            _attempt(url, part, timeout, chunk)
            break
        except _RetryableFailure as failure:
            failures = 0 if _size(part) > largest else failures + 1
            largest = max(largest, _size(part))
            if failures > retries:
                raise _give_up(url, dest, part, failure, retries) from None
            if failures:
                delay = backoff * 2 ** (failures - 1)
                log.warning("%s: %s; retry %d of %d in %.1f s", url, failure, failures, retries, delay)
                time.sleep(delay)
            else:
                log.warning("%s: %s; resuming", url, failure)

    mismatch = _digest_mismatch(part, expected)
    if mismatch:
        part.unlink()
        raise DownloadError(
            f"{url}: the download is corrupt: {mismatch}. It was deleted; run again to "
            "download it afresh. If this repeats, the file on the server has changed."
        )
    part.replace(dest)
    log.info("downloaded %s to %s", url, dest)
    return dest


def _attempt(url: str, part: Path, timeout: float, chunk: int) -> None:
    """One request: append to ``part`` (resuming) or rewrite it; return when it is complete."""
    offset = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    responded = False
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            responded = True
            if offset and (response.status != 206 or _range_start(response.headers) != offset):
                log.info("%s: the server did not resume at byte %d; restarting from the beginning", url, offset)
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length else None
            with open(part, "ab" if offset else "wb") as out, _byte_bar(part.name, total, offset) as bar:
                while block := response.read(chunk):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            if _range_total(error.headers) == offset:
                return  # the partial file already holds every byte
            part.unlink()
            raise _RetryableFailure("the partial file does not match the server's; restarting", True) from None
        if error.code in (408, 429) or error.code >= 500:
            raise _RetryableFailure(f"HTTP {error.code} {error.reason}", True) from None
        raise DownloadError(
            f"{url}: HTTP {error.code} {error.reason} (not retried); "
            "check the URL, or whether the file needs a login or request form"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise _RetryableFailure(str(reason) or type(error).__name__, responded) from None
    received = _size(part)
    if total is not None and received < total:
        raise _RetryableFailure(f"connection closed after {received} of {total} bytes", True)


def _give_up(url: str, dest: Path, part: Path, failure: _RetryableFailure, retries: int) -> DownloadError:
    kept = f" The partial download {part} is kept and will be resumed." if part.exists() else ""
    if not failure.reached_server:
        host = urllib.parse.urlsplit(url).netloc
        return DownloadError(
            f"{url}: cannot reach {host} ({failure}) after {retries + 1} attempts. This machine may be "
            f"offline or the host down. Fetch the file some other way and put it at {dest}, then run "
            f"again.{kept}"
        )
    return DownloadError(
        f"{url}: download failed after {retries + 1} attempts ({failure}).{kept} "
        f"You can also put the file at {dest} by hand."
    )


def _digest_mismatch(path: Path, expected: dict[str, str]) -> str | None:
    """``None`` if every expected digest matches, else a sentence saying which one differs."""
    for algorithm, want in expected.items():
        with open(path, "rb") as handle:
            got = hashlib.file_digest(handle, algorithm).hexdigest()
        if got != want:
            return f"its {algorithm} is {got}, expected {want}"
    return None


def _range_start(headers) -> int | None:
    """First byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    value = headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _range_total(headers) -> int | None:
    """TOTAL of a ``Content-Range: bytes */TOTAL`` header (sent with HTTP 416)."""
    try:
        return int(headers.get("Content-Range", "").rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _byte_bar(desc: str, total: int | None, initial: int) -> tqdm:
    """A byte-counting bar that stays readable in a log file, like ``logs.progress``."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        desc=desc,
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        mininterval=0.5 if interactive else 10.0,
        ascii=not interactive,
        dynamic_ncols=interactive,
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _is_hex_digest(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdefABCDEF" for c in text)

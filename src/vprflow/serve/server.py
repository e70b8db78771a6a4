"""The command line that starts the service: ``vprflow serve BUNDLE_DIR`` (uvicorn)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..heap import keep_freed_memory
from .app import Options


def parser(prog: str = "vprflow serve") -> argparse.ArgumentParser:
    defaults = Options()
    p = argparse.ArgumentParser(prog=prog, description="Serve a bundle built by the pipeline "
                                "(results/service/<model>/<search>): image and text queries and a web page.")
    p.add_argument("bundle", help="bundle folder (or its bundle.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb,
                   help="largest accepted upload in MB (bigger: 413)")
    p.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                   help="largest accepted image in pixels, read from its header (decompression bombs: 413)")
    p.add_argument("--batch-window-ms", type=float, default=defaults.batch_window_ms,
                   help="how long an image query waits for others to share its forward pass")
    p.add_argument("--max-batch", type=int, default=defaults.max_batch, help="most image queries in one batch")
    p.add_argument("--text-engine", choices=["auto", "clip", "ngram"], default=None,
                   help="override the bundle's text engine")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and faiss threads")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "vprflow serve") -> None:
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    keep_freed_memory()
    import faiss
    import torch
    import uvicorn

    from .app import Service, create_app

    torch.set_num_threads(max(1, args.threads))
    faiss.omp_set_num_threads(max(1, args.threads))
    options = Options(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                      batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, text_engine=args.text_engine)
    try:
        service = Service(args.bundle, options)
    except InputError as error:
        sys.exit(f"vprflow serve: {error}")
    uvicorn.run(create_app(service), host=args.host, port=args.port, access_log=False, log_level="info")


def spawn(bundle: str | Path, port: int, *options: str, log: str | Path, env: dict[str, str] | None = None,
          timeout: float = 300.0) -> subprocess.Popen:
    """Start ``python -m vprflow.serve`` on 127.0.0.1:``port`` in a subprocess (output to ``log``)
    and return once ``/health`` answers; for tests and benchmarks. Raises RuntimeError with the
    log's tail when the server exits or does not answer in ``timeout`` seconds."""
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "vprflow.serve", str(bundle), "--port", str(port), *options],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait()
            tail = Path(log).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the server did not come up (exit {process.returncode}):\n{tail}")
        time.sleep(0.25)


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a server ``spawn`` started (SIGTERM, then SIGKILL)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

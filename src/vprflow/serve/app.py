"""The HTTP service of one bundle (FastAPI): image and text queries, thumbnails, a web page.

Endpoints: ``POST /search/image`` (multipart field ``file`` or the raw body),
``GET /search/text?q=&k=``, ``GET /thumbnails/{image_id}``, ``GET /health``,
``GET /metrics``, ``GET /`` (the page). The model, index and text engine load once, at
start; image queries go through the micro-batcher. Every request is logged with its
latency; bad input gets a 4xx with a message and the server goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..logs import log
from .batching import MicroBatcher
from .bundle import Bundle
from .engine import ImageSearch, TextSearch, resident_mb
from .upload import UploadRejected, decode_upload, image_bytes, read_body

LATENCY_WINDOW = 10_000
"""Latencies kept per route for /metrics' percentiles (the most recent)."""


@dataclass
class Options:
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    batch_window_ms: float = 10.0
    max_batch: int = 32
    idle_trim_s: float = 1.0  # freed memory goes back to the system after this long without a query
    default_k: int = 10
    text_engine: str | None = None  # None: the bundle's


class Service:
    """Everything loaded once per process."""

    def __init__(self, bundle_path: str | Path, options: Options):
        self.options = options
        self.bundle = Bundle.load(bundle_path)
        self.images = ImageSearch(self.bundle)
        self.batcher = MicroBatcher(self.images.run, options.batch_window_ms / 1000.0, options.max_batch,
                                    on_idle=self.images.memory.when_idle, idle_s=options.idle_trim_s)
        # In the batch thread, like every later forward pass: one more thread calling torch is one
        # more OpenMP team, and with more of its threads than cores libgomp stops spinning between
        # parallel regions (a single query's forward pass took 23 ms instead of 13 on 2 cores).
        self.batcher.in_batch_thread(self.images.warm_up, np.full((64, 64, 3), 128, np.uint8))
        self.text = TextSearch(self.bundle, options.text_engine)
        database = self.bundle.database
        self.row_of = {image_id: i for i, image_id in enumerate(database["image_id"])}
        self.thumb_offset = database["thumb_offset"].to_numpy()
        self.thumb_length = database["thumb_length"].to_numpy()
        with open(self.bundle.file("thumbnails"), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.thumbnails = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        # Uploads decode in a few threads of their own: every thread that allocates gets a glibc
        # arena, and decoding photos of many sizes in Starlette's 40 threads grew memory by steps.
        self.decoders = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 1)),
                                           thread_name_prefix="decode")
        self.latencies: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=LATENCY_WINDOW))
        self.statuses: collections.Counter = collections.Counter()
        self.started = time.time()

    def health(self) -> dict[str, Any]:
        record = self.bundle.record
        return {"status": "ok", "version": __version__, "model": record["model"], "search": record["search"],
                "descriptor": record["model_settings"]["descriptor"],
                "backend": record["search_settings"]["backend"], "n_database": len(self.bundle.database),
                "n_excluded": int(self.bundle.database["excluded"].sum()), "max_k": self.images.max_k,
                "heads": self.images.heads, "text_engine": self.text.name,
                "text_engine_configured": self.text.configured, "text_engine_reason": self.text.reason,
                "pose_method": record["pose"]["method"], "max_upload_mb": self.options.max_upload_mb,
                "max_pixels": self.options.max_pixels}

    def metrics(self) -> dict[str, Any]:
        routes = {}
        for route, values in self.latencies.items():
            ms = np.array(values) * 1000
            routes[route] = {"count": len(ms), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 3)
                                                  for q in (50, 95, 99)}}
        return {"uptime_s": round(time.time() - self.started, 1), "rss_mb": round(resident_mb(), 1),
                "requests": {f"{route} {status}": n for (route, status), n in sorted(self.statuses.items())},
                "latency": routes, "image_batches": self.batcher.stats.as_dict(),
                "memory_releases": self.images.memory.releases}

    def thumbnail(self, image_id: str) -> bytes | None:
        row = self.row_of.get(image_id)
        if row is None or not self.thumb_length[row]:
            return None
        start = int(self.thumb_offset[row])
        return bytes(self.thumbnails[start:start + int(self.thumb_length[row])])

    def prepare(self, data: bytes) -> tuple[tuple[int, int], np.ndarray]:
        """(width, height) of an upload and the model's input made of it (runs in a worker thread)."""
        descriptor = self.images.descriptor
        size, rgb = decode_upload(data, self.options.max_pixels, descriptor.decode_size())
        return size, descriptor.preprocess(rgb)

    def check_k(self, k: int | None, default: int, maximum: int) -> int:
        k = default if k is None else k
        if not 1 <= k <= maximum:
            raise UploadRejected(422, f"k must be between 1 and {maximum}, got {k}")
        return k


class RequestLog:
    """ASGI middleware: a log line per request with its latency, and the counts and latencies
    /metrics reports (plain ASGI: Starlette's BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            name = f"{scope['method']} {route.path if route is not None else 'unrouted'}"
            self.service.latencies[name].append(seconds)
            self.service.statuses[(name, status[0])] += 1
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], seconds * 1000)


def create_app(service: Service):
    """The FastAPI application answering with ``service`` (loaded before, so a bad bundle
    stops the command before the server binds)."""
    options = service.options
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        app.state.service = service
        yield
        await service.batcher.stop()
        service.decoders.shutdown(wait=False)

    app = FastAPI(title="vprflow", version=__version__, lifespan=lifespan)

    app.add_middleware(RequestLog, service=service)

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, error: UploadRejected):
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health(request: Request):
        return request.app.state.service.health()

    @app.get("/metrics")
    async def metrics(request: Request):
        return request.app.state.service.metrics()

    @app.get("/thumbnails/{image_id}")
    async def thumbnail(image_id: str, request: Request):
        data = request.app.state.service.thumbnail(image_id)
        if data is None:
            return JSONResponse({"detail": f"unknown image id {image_id!r}: not in this bundle's database"},
                                status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/search/image")
    async def search_image(request: Request, k: int | None = Query(None, description="results to return")):
        service: Service = request.app.state.service
        k = service.check_k(k, min(options.default_k, service.images.max_k), service.images.max_k)
        with service.batcher.arriving():  # a batch forming now waits for this query
            body = await read_body(request.stream(), request.headers.get("content-length"),
                                   int(options.max_upload_mb * 1e6))
            data = image_bytes(body, request.headers.get("content-type"))
            loop = asyncio.get_running_loop()
            size, prepared = await loop.run_in_executor(service.decoders, service.prepare, data)
            answer = service.batcher.enqueue(prepared, k)
        answer = await answer
        images = service.images
        return JSONResponse({"k": k, "query": {"width": size[0], "height": size[1]},
                             "results": [images.describe(r, s) for r, s in zip(answer.rows[:k], answer.scores[:k])],
                             "pose": answer.pose,
                             "labels": {head: [{"label": label, "probability": p} for label, p in values]
                                        for head, values in answer.labels.items()}})

    @app.get("/search/text")
    async def search_text(request: Request, q: str = Query("", description="a description or a place name"),
                          k: int | None = Query(None, description="places to return")):
        service: Service = request.app.state.service
        k = service.check_k(k, 5, 100)
        if not q.strip():
            raise UploadRejected(400, "empty text query: give q=, e.g. /search/text?q=Eiffel+tower")
        matches = await service.batcher.alone(service.text.search, q, k)
        images = service.images
        return JSONResponse({"q": q, "k": k, "engine": service.text.name,
                             "places": [{"label": m.label, "score": m.score, "n_photos": len(m.rows)}
                                        for m in matches],
                             "results": [{**images.describe(r, s), "match": m.label}
                                         for m in matches for r, s in zip(m.rows, m.row_scores)]})

    return app

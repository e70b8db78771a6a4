"""The service under load, against the same work done bare in-process.

For each bundle (``results/service/<model>/<search>``) it starts ``vprflow serve`` on a free
loopback port (``--threads`` torch/faiss threads) and loads, in this process, the objects
the server answers with (the bundle's model and index, ``vprflow.serve.engine``), with as
many threads. Then, round after round, so that both see the same machine:

* bare single: one forward pass + one search for one preprocessed image (``--bare-repeats`` times);
* served, 1 client: ``--requests`` uploads one after another;
* bare batched: forward + search of batches of 16 preprocessed images;
* served, 4 and 16 clients (``--clients``): ``--requests`` uploads, that many at a time.

Latencies are measured by the client (upload to parsed answer): p50, p95, p99, and
requests/s. The verdicts, as ratios within each round, medians over rounds: served
1-client p50 / bare single (goal <= 1.3), served 16-client throughput / bare batched
throughput (goal >= 0.7), and whether the server's resident memory stays flat across
the run (sampled every 50 ms: the last round's peak / the first round's, goal <= 1.10;
idle at the end / idle at the start; and, for what a loaded server holds beyond an idle
one, overall max / min). Bare timings exclude decoding the JPEG (the server decodes
every upload); ``bare+decode`` adds it, for reference. The client runs in this
process (asyncio streams with prepared requests, one keep-alive connection per client,
answers read whole and parsed) and takes its share of the cores; the server's CPU seconds per request are printed too. Bounded: fixed request
counts and rounds, then the server is stopped.

    python benchmarks/bench_service.py /tmp/run/results/service/netvlad/exact \\
        --images '/tmp/run/resources/demo/default-seed0/query/*.jpg'
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


IDLE_S = 1.5
"""Seconds the benchmark waits for an idle sample: the server gives freed memory back after
1 s without a query (``Options.idle_trim_s``)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("--images", required=True, help="glob of query photos to upload (cycled)")
    parser.add_argument("--name", help="label of this bundle in the output (default: its folder)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent clients")
    parser.add_argument("--requests", type=int, default=64, help="uploads per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bare-repeats", type=int, default=32, help="bare single queries per round")
    parser.add_argument("--batch", type=int, default=16, help="images per bare batch")
    parser.add_argument("--threads", type=int, default=2, help="torch/faiss threads, server and bare alike")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--text-queries", default="", help="comma-separated text queries timed after the load")
    parser.add_argument("--server-options", default="", help="more options of vprflow serve, e.g. '--max-batch 8'")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="load client: prepared requests on asyncio streams (default), or httpx")
    parser.add_argument("--json", help="write the summary here as JSON")
    return parser.parse_args()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def server_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """The server's resident memory every ``every`` seconds in a background thread, tagged with
    the phase the benchmark is in (a round's number, or "idle")."""

    def __init__(self, pid: int, every: float = 0.05):
        import threading

        self.pid, self.every, self.phase = pid, every, "start"
        self.samples: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((self.phase, server_rss_mb(self.pid)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def of(self, phase: str) -> list[float]:
        return [mb for p, mb in self.samples if p == phase]


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Bare:
    """The server's own objects, in this process: forward pass + search without HTTP, run in
    one worker thread as the server's batcher runs them (on an oversubscribed machine torch's
    first calls from the main thread were seconds slower than from a worker thread)."""

    def __init__(self, bundle_dir: str, photos: list[bytes]):
        from concurrent.futures import ThreadPoolExecutor

        from vprflow.serve.bundle import Bundle
        from vprflow.serve.engine import ImageSearch
        from vprflow.serve.upload import decode_upload

        engine = ImageSearch(Bundle.load(bundle_dir))
        worker = ThreadPoolExecutor(max_workers=1)

        class InWorker:
            descriptor = engine.descriptor

            @staticmethod
            def run(inputs, k):
                return worker.submit(engine.run, inputs, k).result()

        self.engine = InWorker
        self.decode = decode_upload
        self.photos = photos
        self.at_least = engine.descriptor.decode_size()
        self.inputs = [self.engine.descriptor.preprocess(decode_upload(p, 10**9, self.at_least)[1]) for p in photos]
        for i in range(8):  # loads the network; the first calls of each shape are slow (kernel selection)
            self.engine.run(self.inputs[i % len(self.inputs):][:1], 1)
        self.batched(16, 2, 1)

    def single(self, repeats: int, k: int) -> tuple[list[float], list[float]]:
        """(forward + search, decode + preprocess + forward + search) seconds of single queries."""
        plain, decoded = [], []
        for i in range(repeats):
            start = time.perf_counter()
            self.engine.run([self.inputs[i % len(self.inputs)]], k)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            image = self.engine.descriptor.preprocess(self.decode(self.photos[i % len(self.photos)], 10**9, self.at_least)[1])
            self.engine.run([image], k)
            decoded.append(time.perf_counter() - start)
        return plain, decoded

    def batched(self, batch: int, batches: int, k: int) -> float:
        """Images per second through forward + search in batches of ``batch``."""
        start = time.perf_counter()
        for b in range(batches):
            chosen = [self.inputs[(b * batch + j) % len(self.inputs)] for j in range(batch)]
            self.engine.run(chosen, k)
        return batch * batches / (time.perf_counter() - start)


class Connection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads whole answers.

    A load generator's client should cost the machine little (as wrk's does): the request
    bytes are built once per photo, and an answer is read by its Content-Length, checked for
    status 200 and parsed as JSON. (``--client httpx`` measures with httpx instead, for
    comparison; its CPU per upload is printed as ``client_cpu_ms``.)"""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        return cls(*await asyncio.open_connection(host, port))

    async def exchange(self, request: bytes) -> dict:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int(next(v for k, v in headers.items() if k.strip().lower() == "content-length"))
        body = await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.writer.close()


def upload_request(port: int, photo: bytes, k: int) -> bytes:
    """The raw HTTP request of one image query (the body is the photo, as `curl --data-binary`)."""
    return (f"POST /search/image?k={k} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(photo)}\r\n\r\n").encode("latin-1") + photo


async def load(port: int, requests_bytes: list[bytes], clients: int, requests: int, k: int,
               kind: str = "raw") -> dict[str, float]:
    """``requests`` uploads by ``clients`` concurrent clients (one connection each);
    client-side latencies, and the client's CPU milliseconds per request."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def httpx_client() -> None:
        import httpx

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                     limits=httpx.Limits(max_connections=1)) as http:
            for i in counter:
                start = time.perf_counter()
                body = requests_bytes[i % len(requests_bytes)].split(b"\r\n\r\n", 1)[1]
                answer = await http.post("/search/image", params={"k": k}, content=body)
                answer.raise_for_status()
                if len(answer.json()["results"]) != k:
                    raise RuntimeError(f"asked for {k} results")
                latencies.append(time.perf_counter() - start)

    async def client() -> None:
        connection = await Connection.open("127.0.0.1", port)
        try:
            for i in counter:
                start = time.perf_counter()
                answer = await connection.exchange(requests_bytes[i % len(requests_bytes)])
                if len(answer["results"]) != k:
                    raise RuntimeError(f"asked for {k} results, got {len(answer['results'])}")
                latencies.append(time.perf_counter() - start)
        finally:
            connection.close()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*[(client if kind == "raw" else httpx_client)() for _ in range(clients)])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {**percentiles(latencies), "rps": requests / wall, "client_cpu_ms": 1000 * cpu / requests,
            "n": len(latencies)}


def main() -> None:
    args = parse_args()
    import vprflow  # noqa: F401  (first: it picks the BLAS kernels faiss loads)

    import faiss
    import httpx
    import torch

    from vprflow.serve.server import spawn, stop

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    paths = sorted(glob.glob(args.images))
    if not paths:
        sys.exit(f"no photos match {args.images}")
    photos = [Path(p).read_bytes() for p in paths]
    name = args.name or "/".join(Path(args.bundle).resolve().parts[-2:])
    levels = [int(c) for c in args.clients.split(",")]
    print(f"== {name}: {len(photos)} photos, {args.requests} uploads per level, {args.rounds} rounds, "
          f"{args.threads} threads, k={args.k}", flush=True)

    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkstemp(prefix="bench_service_", suffix=".log")[1])
    server = spawn(args.bundle, port, "--threads", str(args.threads), *args.server_options.split(), log=log)
    url = f"http://127.0.0.1:{port}"
    uploads = [upload_request(port, photo, args.k) for photo in photos]
    try:
        bare = Bare(args.bundle, photos)
        health = httpx.get(f"{url}/health").json()
        print(f"   model {health['model']} ({health['descriptor']}), search {health['search']} "
              f"({health['backend']}), {health['n_database']} database images", flush=True)
        for clients in levels:  # warm the server's pools and batch shapes as bare's are
            asyncio.run(load(port, uploads, clients, 2 * clients, args.k, args.client))
        rss = RssSampler(server.pid)
        time.sleep(IDLE_S)
        idle_start = server_rss_mb(server.pid)
        rounds = []
        for r in range(args.rounds):
            rss.phase = f"round {r + 1}"
            row: dict[str, dict] = {}
            plain, decoded = bare.single(args.bare_repeats, args.k)
            row["bare"] = percentiles(plain)
            row["bare+decode"] = percentiles(decoded)
            for clients in levels:
                cpu = server_cpu_s(server.pid)
                row[f"served x{clients}"] = asyncio.run(load(port, uploads, clients, args.requests, args.k,
                                                             args.client))
                row[f"served x{clients}"]["server_cpu_ms"] = 1000 * (server_cpu_s(server.pid) - cpu) / args.requests
                if clients == levels[0]:
                    row["bare batched"] = {"rps": bare.batched(args.batch, max(2, args.requests // args.batch),
                                                                args.k)}
            rounds.append(row)
            single = row[f"served x{levels[0]}"]["p50"] / row["bare"]["p50"]
            many = row[f"served x{levels[-1]}"]["rps"] / row["bare batched"]["rps"]
            print(f"-- round {r + 1}: bare p50 {row['bare']['p50']:.1f} ms (with decode "
                  f"{row['bare+decode']['p50']:.1f}), bare batched {row['bare batched']['rps']:.1f} img/s; "
                  f"single p50 ratio {single:.2f}, x{levels[-1]} throughput ratio {many:.2f}", flush=True)
            for key, value in row.items():
                print(f"   {key:15s} " + "  ".join(f"{k} {v:8.2f}" for k, v in value.items() if k != "n"), flush=True)

        rss.phase = "idle"
        time.sleep(IDLE_S)
        idle_end = server_rss_mb(server.pid)
        rss.stop()
        text = {}
        for query in filter(None, args.text_queries.split(",")):
            times = []
            for _ in range(20):
                start = time.perf_counter()
                answer = httpx.get(f"{url}/search/text", params={"q": query}).json()
                times.append(time.perf_counter() - start)
            text[query] = {"p50_ms": 1000 * statistics.median(times), "top": [p["label"] for p in answer["places"]]}
        metrics = httpx.get(f"{url}/metrics").json()
    finally:
        stop(server)

    def median(key, field):
        return statistics.median(r[key][field] for r in rounds)

    single_ratios = [r[f"served x{levels[0]}"]["p50"] / r["bare"]["p50"] for r in rounds]
    throughput_ratios = [r[f"served x{levels[-1]}"]["rps"] / r["bare batched"]["rps"] for r in rounds]
    summary = {
        "bundle": name,
        "bare_p50_ms": median("bare", "p50"),
        "bare_decode_p50_ms": median("bare+decode", "p50"),
        "bare_batched_rps": median("bare batched", "rps"),
        "served": {c: {k: median(f"served x{c}", k)
                       for k in ("p50", "p95", "p99", "rps", "server_cpu_ms", "client_cpu_ms")}
                   for c in levels},
        "single_p50_ratio": {"median": statistics.median(single_ratios), "min": min(single_ratios),
                             "all": single_ratios},
        "single_p50_ratio_vs_bare_with_decode": statistics.median(
            r[f"served x{levels[0]}"]["p50"] / r["bare+decode"]["p50"] for r in rounds),
        "throughput_ratio": {"median": statistics.median(throughput_ratios), "max": max(throughput_ratios),
                             "all": throughput_ratios},
        "rss_mb": {"idle_start": idle_start, "idle_end": idle_end,
                   "peak_by_round": [max(rss.of(f"round {r + 1}")) for r in range(args.rounds)],
                   "min": min(mb for _, mb in rss.samples), "max": max(mb for _, mb in rss.samples)},
        "batches": metrics["image_batches"], "text": text,
    }
    print(f"== {name} (medians over {args.rounds} rounds)")
    print(f"   bare forward+search p50 {summary['bare_p50_ms']:.1f} ms (+decode {summary['bare_decode_p50_ms']:.1f} ms),"
          f" bare batched {summary['bare_batched_rps']:.1f} img/s")
    for c, v in summary["served"].items():
        print(f"   served x{c:<3d} p50 {v['p50']:7.1f}  p95 {v['p95']:7.1f}  p99 {v['p99']:7.1f} ms  "
              f"{v['rps']:6.1f} req/s  CPU per request: server {v['server_cpu_ms']:.1f} ms, "
              f"client {v['client_cpu_ms']:.1f} ms")
    print(f"   single-query p50 / bare: {summary['single_p50_ratio']['median']:.2f} (goal <= 1.3; per round "
          + ", ".join(f"{x:.2f}" for x in single_ratios) + f"); / bare with decode: "
          f"{summary['single_p50_ratio_vs_bare_with_decode']:.2f}")
    print(f"   x{levels[-1]} throughput / bare batched: {summary['throughput_ratio']['median']:.2f} (goal >= 0.7; "
          "per round " + ", ".join(f"{x:.2f}" for x in throughput_ratios) + ")")
    memory = summary["rss_mb"]
    peaks = memory["peak_by_round"]
    summary["rss_growth"] = {"peak_last_over_first_round": peaks[-1] / peaks[0],
                             "idle_end_over_start": memory["idle_end"] / memory["idle_start"],
                             "max_over_min": memory["max"] / memory["min"]}
    growth = summary["rss_growth"]
    print(f"   server RSS (sampled every 50 ms): idle {memory['idle_start']:.0f} MB at the start, "
          f"{memory['idle_end']:.0f} at the end ({growth['idle_end_over_start']:.3f}); peak per round "
          + ", ".join(f"{p:.0f}" for p in peaks) + f" MB: last / first {growth['peak_last_over_first_round']:.3f} "
          f"(goal: flat, <= 1.10); under load vs idle, max / min {growth['max_over_min']:.3f}")
    runs = summary["batches"]["run_ms_by_size"]
    big = {size: v for size, v in runs.items() if int(size) >= args.batch // 2}
    if "1" in runs and big:  # the same ratios against the server's own forward+search runs
        inside_single = runs["1"]["median"]
        inside_rps = 1000 * sum(int(size) * summary["batches"]["sizes"][size] for size in big) / sum(
            v["total"] for v in big.values())
        summary["in_server"] = {"single_run_p50_ms": inside_single, "batched_rps": inside_rps,
                                "single_p50_ratio": summary["served"][levels[0]]["p50"] / inside_single,
                                "throughput_ratio": summary["served"][levels[-1]]["rps"] / inside_rps}
        print(f"   in the server: single forward+search p50 {inside_single:.1f} ms, batches of >= {args.batch // 2}: "
              f"{inside_rps:.1f} img/s -> single p50 ratio {summary['in_server']['single_p50_ratio']:.2f}, "
              f"x{levels[-1]} throughput ratio {summary['in_server']['throughput_ratio']:.2f}")
    print(f"   batches: {json.dumps(summary['batches'])}")
    for query, value in text.items():
        print(f"   text {query!r}: p50 {value['p50_ms']:.1f} ms -> {value['top']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

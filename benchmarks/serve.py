"""``bert-onnx serve`` under concurrent load on loopback, against offline ``Encoder.embed`` of the same texts.

    python -m benchmarks.serve --model-dir DIR [--variant int8] [--concurrency 1 4 16 64] [--sizes 1 32]
                               [--repeats 3] [--seconds 60] [--peer NAME=URL ...]

DIR is a ``bert-onnx export`` of a real checkpoint (MiniLM: ``--variants fp32,int8``). The server runs as a
subprocess (``python -m bert_onnx serve DIR --port 0 --pooling mean --normalize``, same variant and threads); this
process is both the load generator and the offline reference, with its own ``Encoder`` of the same folder.

Cells: ``concurrency`` closed-loop clients, each sending ``POST /v1/embeddings`` requests of ``size`` real texts
(Python's reference documentation, ``encoding_format="base64"`` as the ``openai`` SDK sends it) over one keep-alive
connection, until the cell's texts are all sent once (at most ``--seconds``). A cell sends
``clamp(32 * concurrency * size, 256, 2048)`` texts (the corpus repeated when that is more than it holds), so
small cells stay short and large ones hold several requests per client. Each repeat runs, per cell, offline
``Encoder.embed`` of exactly the cell's texts (mean pooling, normalized, batches of 32), then the cell through the
server: engines alternate, so drift on a noisy machine hits both. Batch-1 latency offline is ``embed([text])`` on
the texts the 1 × 1 cell sends. Every client's first answer is checked against the offline vectors.

Rows: docs/s (median over repeats), the ratio to offline docs/s on the same texts, p50 and p99 request latency
(over every request of every repeat), and for 1 × 1 the p50 overhead over offline batch-1 ``embed``.
``--peer NAME=URL`` adds rows for another OpenAI-compatible server already running on loopback (e.g. Infinity,
started in its own environment: see docs/serve.md), measured in the same repeats; NAME is sent as ``model``.

The load generator is a minimal asyncio HTTP/1.1 client (no parsing beyond status and Content-Length), so it
takes as little CPU from the server as it can; on a 2-vCPU machine it still shares the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column
from bert_onnx import timing

BATCH = 32
SERVER_PACKAGES = ("onnxruntime", "starlette", "uvicorn", "uvloop", "httptools")
HEAD_END = b"\r\n\r\n"


def _p50(r: Mapping[str, Any]) -> str:
    extra = ""
    if "p50_overhead_ms" in r:
        extra = f" (offline batch-1 {r['offline_batch1_p50_ms']:.2f}; +{r['p50_overhead_ms']:.2f})"
    return f"{r['p50_ms']:.2f}{extra}"


COLUMNS = [
    Column("engine", "engine"),
    Column("clients × texts/request", lambda r: f"{r['concurrency']} × {r['texts_per_request']}"),
    Column("docs/s", "docs_per_s", ".1f"),
    Column("offline docs/s", "offline_docs_per_s", ".1f"),
    Column("× offline", "x_offline", ".2f"),
    Column("p50 ms", _p50),
    Column("p99 ms", "p99_ms", ".1f"),
    Column("max abs diff", "max_abs_diff_to_offline", ".1e"),
]


@dataclass
class Cell:
    concurrency: int
    size: int
    texts: int
    latencies: dict[str, list[float]] = field(default_factory=dict)  # engine -> seconds per request
    seconds: dict[str, list[float]] = field(default_factory=dict)  # engine -> wall time per repeat
    max_diff: dict[str, float] = field(default_factory=dict)


class Connection:
    """One keep-alive HTTP/1.1 connection: POST a body, read the status and a Content-Length body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        response = await self.reader.readuntil(HEAD_END)
        status = int(response[9:12])
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", response)
        if match is None:
            raise RuntimeError(f"no Content-Length in {response!r:.200}")
        return status, await self.reader.readexactly(int(match.group(1)))

    def close(self) -> None:
        self.writer.close()


def _bodies(texts: list[str], size: int, model: str) -> list[bytes]:
    return [
        json.dumps({"model": model, "input": texts[i : i + size], "encoding_format": "base64"}).encode()
        for i in range(0, len(texts), size)
    ]


def _vectors(answer: bytes) -> np.ndarray:
    data = json.loads(answer)["data"]
    return np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data])


async def _load(
    url: str, bodies: list[bytes], concurrency: int, limit_s: float
) -> tuple[list[float], float, dict[int, bytes]]:
    """POST every body to ``url`` once from ``concurrency`` clients: latencies, wall seconds, first answers."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    path = parts.path
    connections = [await Connection.open(parts.hostname, parts.port) for _ in range(concurrency)]
    latencies: list[float] = []
    first: dict[int, bytes] = {}
    started = time.perf_counter()
    deadline = started + limit_s

    async def client(number: int, connection: Connection) -> None:
        for index in range(number, len(bodies), concurrency):
            if time.perf_counter() > deadline:
                return
            sent = time.perf_counter()
            status, answer = await connection.post(path, bodies[index])
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                raise RuntimeError(f"status {status}: {answer[:300]!r}")
            if index < concurrency:  # each client's first answer, checked against the offline vectors
                first[index] = answer

    try:
        await asyncio.gather(*(client(n, c) for n, c in enumerate(connections)))
    finally:
        for connection in connections:
            connection.close()
    return latencies, time.perf_counter() - started, first


def start_server(model_dir: Path, variant: str | None, threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "bert_onnx", "serve", str(model_dir), "--port", "0", "--pooling", "mean"]
    command += ["--normalize", "--threads", str(threads), *(["--variant", variant] if variant else []), *extra]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    for line in process.stderr:
        match = re.search(r"on (http://\S+)", line)
        if match:
            return process, match.group(1)
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError(f"the server did not start: {' '.join(command)}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bert_onnx.export.corpus import documentation_paragraphs, split
    from bert_onnx.runtime import Encoder

    corpus, _ = split(len(documentation_paragraphs()), seed=1)  # every paragraph, in a shuffled order
    encoder = Encoder(args.model_dir, threads=args.threads, variant=args.variant)
    process, url = start_server(args.model_dir, encoder.variant, args.threads, args.server_args)
    engines = {"bert-onnx-serve": f"{url}/v1/embeddings", **dict(peer.split("=", 1) for peer in args.peer)}
    cells = []
    for concurrency in args.concurrency:
        for size in args.sizes:
            count = min(max(32 * concurrency * size, 256), 2048)
            cells.append(Cell(concurrency, size, count))
    texts_of = {cell.texts: [corpus[i % len(corpus)] for i in range(cell.texts)] for cell in cells}
    reference = {n: encoder.embed(t, pooling="mean", normalize=True, batch_size=BATCH) for n, t in texts_of.items()}
    offline_latency: list[float] = []
    try:
        for cell in cells:  # warm-up: every shape once through each engine
            for name, address in engines.items():
                asyncio.run(_load(address, _bodies(texts_of[cell.texts], cell.size, name)[:8], 2, 30))
        for repeat in range(args.repeats):
            for cell in cells:
                texts = texts_of[cell.texts]
                for name in timing.round_order(["offline", *engines], repeat):
                    if name == "offline":
                        started = time.perf_counter()
                        encoder.embed(texts, pooling="mean", normalize=True, batch_size=BATCH)
                        cell.seconds.setdefault(name, []).append(time.perf_counter() - started)
                        if cell.concurrency == 1 and cell.size == 1:
                            for text in texts:
                                started = time.perf_counter()
                                encoder.embed([text], pooling="mean", normalize=True)
                                offline_latency.append(time.perf_counter() - started)
                        continue
                    bodies = _bodies(texts, cell.size, name)
                    latencies, seconds, first = asyncio.run(
                        _load(engines[name], bodies, cell.concurrency, args.seconds)
                    )
                    cell.latencies.setdefault(name, []).extend(latencies)
                    cell.seconds.setdefault(name, []).append(seconds)
                    sent = len(latencies) * cell.size
                    if sent < len(texts):
                        print(f"{name} {cell.concurrency}x{cell.size}: stopped at --seconds after {sent} texts")
                    for index, answer in first.items():
                        span = slice(index * cell.size, (index + 1) * cell.size)
                        diff = float(np.abs(_vectors(answer) - reference[cell.texts][span]).max())
                        cell.max_diff[name] = max(cell.max_diff.get(name, 0.0), diff)
                    print(
                        f"repeat {repeat} {name} {cell.concurrency}x{cell.size}: {sent / seconds:.1f} docs/s "
                        f"(offline {len(texts) / cell.seconds['offline'][-1]:.1f})",
                        flush=True,
                    )
    finally:
        process.terminate()
        process.wait(timeout=60)
    rows = []
    for cell in cells:
        offline = cell.texts / statistics.median(cell.seconds["offline"])
        for name in engines:
            docs = len(cell.latencies[name]) * cell.size / len(cell.seconds[name])
            docs_per_s = docs / statistics.median(cell.seconds[name])
            row: dict[str, Any] = {
                "engine": name,
                "concurrency": cell.concurrency,
                "texts_per_request": cell.size,
                "texts": cell.texts,
                "repeats": args.repeats,
                "seconds_per_repeat": cell.seconds[name],
                "offline_seconds_per_repeat": cell.seconds["offline"],
                "docs_per_s": docs_per_s,
                "offline_docs_per_s": offline,
                "x_offline": docs_per_s / offline,
                "p50_ms": timing.percentile(cell.latencies[name], 50) * 1000,
                "p99_ms": timing.percentile(cell.latencies[name], 99) * 1000,
                "max_abs_diff_to_offline": cell.max_diff.get(name),
            }
            if cell.concurrency == 1 and cell.size == 1:
                row["offline_batch1_p50_ms"] = timing.percentile(offline_latency, 50) * 1000
                row["p50_overhead_ms"] = row["p50_ms"] - row["offline_batch1_p50_ms"]
            rows.append(row)
    installed = harness.versions(SERVER_PACKAGES)
    return {
        "model": {"dir": str(args.model_dir), "variant": encoder.variant, "label": args.label},
        "threads": args.threads,
        "server_args": args.server_args,
        "peers": {"engines": args.peer, "note": args.peer_note},
        "versions": {p: installed.get(p) for p in SERVER_PACKAGES},
        "corpus": "pydoc_data.topics paragraphs (Python reference documentation)",
        "rows": rows,
    }


def main() -> None:
    parser = harness.arguments(__doc__, repeats=3)
    parser.add_argument("--variant", help="default: the folder's default for the CPU")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 32], help="texts per request")
    parser.add_argument("--seconds", type=float, default=60, help="at most this long per cell and engine")
    parser.add_argument(
        "--peer", action="append", default=[], metavar="NAME=URL", help="another server's embeddings URL (with path)"
    )
    parser.add_argument("--peer-note", default="", help="how the peers were run (versions, engine), kept in the JSON")
    parser.add_argument("--server-arg", dest="server_args", action="append", default=[], help="extra serve option")
    args = parser.parse_args()
    result = run(args)
    harness.write(args.out, "serve", result, harness.table(result["rows"], COLUMNS), args.label, SERVER_PACKAGES)


if __name__ == "__main__":
    main()

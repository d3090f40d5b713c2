"""Requests/s and latency of `tlcli serve` for one tiny model: batch 1, and under concurrent load.

    .venv/bin/python -m bench.serve                      # trains a tiny test_resnet first (about 30 s)
    .venv/bin/python -m bench.serve --ckpt RUN_DIR       # an existing run instead

A real `tlcli serve` process (uvicorn, access log off) on a free port; clients are threads of this
process on persistent HTTP/1.1 connections (http.client), each request one multipart PNG upload
(64x64, what `curl -F file=@x.png` sends) unless the row says otherwise. Latency is from sending
the request to reading the whole answer. Results: bench/results/serve.md.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TLCLI = [sys.executable, "-m", "tlcli.cli"]
TINY = [
    "backbone=test_resnet",
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
    "baseline=false",
]


def png(seed: int, size: int = 64) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def train(tmp: Path) -> Path:
    seed = 100
    for split, n in (("train", 8), ("test", 2)):
        for c in ("cat", "dog", "fox"):
            (tmp / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                seed += 1
                (tmp / "data" / split / c / f"{i}.png").write_bytes(png(seed, 24))
    cmd = [*TLCLI, "fit", *TINY, "data=imagefolder", f"data.root={tmp / 'data'}", f"hydra.run.dir={tmp / 'run'}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return tmp / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tlcli serve` in its own process, up once /health answers."""

    def __init__(self, ckpt: Path, workers: int, log: Path):
        self.port = free_port()
        cmd = [*TLCLI, "serve", f"ckpt={ckpt}", f"port={self.port}", f"workers={workers}", "access_log=false"]
        cmd.append(f"hydra.run.dir={log.parent / f'serve{workers}'}")
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"tlcli serve exited with {self.proc.returncode}: see {log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"tlcli serve did not answer in 300 s: see {log}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def multipart(data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
    body = head.encode() + b"Content-Type: image/png\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def batch_json(images: list[bytes]) -> tuple[bytes, dict]:
    import base64

    doc = {"instances": [{"image": base64.b64encode(b).decode()} for b in images]}
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def client(port: int, bodies: list[tuple[bytes, dict]], n: int, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(n):
        body, headers = bodies[i % len(bodies)]
        start = time.perf_counter()
        conn.request("POST", "/predict", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - start)
        if resp.status != 200:
            raise SystemExit(f"request failed with {resp.status}")
    conn.close()


def load(port: int, bodies, clients: int, per_client: int, rounds: int) -> dict:
    """The round with the median requests/s of `rounds` (the cores are shared: single rounds swing)."""
    client(port, bodies, 10, [])  # warm-up
    runs = sorted((one_round(port, bodies, clients, per_client) for _ in range(rounds)), key=lambda r: r["rps"])
    return {**runs[len(runs) // 2], "all_rps": [r["rps"] for r in runs]}


def one_round(port: int, bodies, clients: int, per_client: int) -> dict:
    lat: list[list[float]] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=client, args=(port, bodies, per_client, lat[k])) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    every = sorted(x for xs in lat for x in xs)
    return {
        "requests": len(every),
        "rps": len(every) / wall,
        "p50": 1000 * statistics.median(every),
        "p99": 1000 * every[min(len(every) - 1, int(0.99 * len(every)))],
    }


def machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs "
        f"(a benchmark and other engineers' tests ran alongside: absolute numbers are indicative), "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a run dir or .ckpt (default: train a tiny test_resnet first)")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the load rows")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes to measure")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row; the median one is reported")
    parser.add_argument("--name", default="serve")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ckpt = Path(args.ckpt) if args.ckpt else train(tmp)
    images = [png(k) for k in range(16)]
    single = [multipart(b) for b in images]
    batches = [batch_json(images[k : k + 8]) for k in (0, 8)]
    rows = []
    for workers in args.workers:
        server = Server(ckpt, workers, tmp / f"serve{workers}.log")
        try:
            n = args.requests
            rows.append((workers, "batch 1, one client", 1, load(server.port, single, 1, n, args.rounds)))
            per = max(1, n // args.clients)
            rows.append(
                (
                    workers,
                    f"batch 1, {args.clients} concurrent clients",
                    1,
                    load(server.port, single, args.clients, per, args.rounds),
                )
            )
            rows.append(
                (
                    workers,
                    "batch 8 (JSON instances), one client",
                    8,
                    load(server.port, batches, 1, max(1, n // 8), args.rounds),
                )
            )
        finally:
            server.stop()
    load_avg = os.getloadavg()[0]
    cmd = f".venv/bin/python -m bench.serve {' '.join(sys.argv[1:])}".strip()
    lines = [
        "# `tlcli serve` throughput and latency",
        "",
        f"Command: `{cmd}`",
        f"Machine: {machine()}; load average {load_avg:.1f} at the end",
        f"Model: {'tiny test_resnet (0.37 M parameters) at 32 px, 3 classes' if not args.ckpt else args.ckpt};"
        " requests are 64x64 PNG uploads (multipart), or JSON with 8 base64 PNGs",
        "",
        f"Each row: the median of {args.rounds} rounds by requests/s (every round's requests/s in brackets);"
        " p50/p99 are that round's.",
        "",
        "| workers | load | requests | requests/s | images/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for workers, what, per_request, r in rows:
        rounds = ", ".join(f"{x:.0f}" for x in r["all_rps"])
        lines.append(
            f"| {workers} | {what} | {r['requests']} | {r['rps']:.1f} ({rounds}) | {r['rps'] * per_request:.1f} | "
            f"{r['p50']:.1f} | {r['p99']:.1f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

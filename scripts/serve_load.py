"""Load-test `nextstep-trt serve`: requests per second and p50/p95 latency at several concurrencies, for each
--max-batch, and the batching speedup. Starts (and stops) one server per max batch on free loopback ports.

    python scripts/serve_load.py --model /tmp/s/model --artifacts /tmp/s/art --max-batch 1,4 --concurrency 1,4,16
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from nextstep_trt.serve.client import ImageRequest, LoadResult, run_load


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_server(args, max_batch: int, log) -> tuple[subprocess.Popen, str]:
    """`nextstep-trt serve` for the t2i model only; returns it once ready, with its HTTP URL."""
    http, grpc, metrics = free_ports(3)
    argv = [sys.executable, "-m", "nextstep_trt.cli", "serve", "--model", args.model, "--artifacts", args.artifacts,
            "--backend", args.backend, "--max-batch", str(max_batch), "--max-queue-delay-ms", str(args.delay_ms),
            "--threads", str(args.threads), "--no-edit", "--http-port", str(http), "--grpc-port", str(grpc),
            "--metrics-port", str(metrics), "--exit-timeout", "5"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http}"
    for _ in range(1200):
        if proc.poll() is not None:
            sys.exit(f"serve exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.25)
    proc.send_signal(signal.SIGTERM)
    sys.exit("serve was not ready in 300 s")


def requests_for(args, n: int, offset: int) -> list[ImageRequest]:
    return [ImageRequest(args.prompt, height=args.height, width=args.width, seed=offset + i) for i in range(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--artifacts", required=True)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--max-batch", default="1,4", help="comma-separated --max-batch values, one server each")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--prompt", default="a photo of a red fox in the snow")
    p.add_argument("--delay-ms", type=float, default=50.0, help="--max-queue-delay-ms of the servers")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model instance")
    p.add_argument("--log", default="serve_load.log", help="the servers' log")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    results: dict[int, list[LoadResult]] = {}
    with open(args.log, "w") as log:
        for mb in [int(x) for x in args.max_batch.split(",")]:
            proc, url = start_server(args, mb, log)
            try:
                run_load(url, requests_for(args, 8, 10_000), 4)                       # warm up
                results[mb] = [run_load(url, requests_for(args, args.requests, 0), int(c))
                               for c in args.concurrency.split(",")]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    print(f"{args.height}x{args.width}, {args.requests} requests per level, queue delay {args.delay_ms} ms")
    print(f"{'max_batch':>9} {'concurrency':>11} {'requests':>8} {'errors':>6} {'rps':>8} {'p50_ms':>8} {'p95_ms':>8}")
    for mb, rows in results.items():
        for r in rows:
            print(f"{mb:>9} {r.row()}")
    if len(results) > 1:
        base, *others = sorted(results)
        for mb in others:
            speedups = [f"c={b.concurrency}: {a.rps / b.rps:.2f}x" for a, b in zip(results[mb], results[base])]
            print(f"batching speedup (rps, max batch {mb} vs {base}): {', '.join(speedups)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(mb): [r.to_dict() for r in rows] for mb, rows in results.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

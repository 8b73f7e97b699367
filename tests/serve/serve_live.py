"""Helpers for live-server tests: `nextstep-trt serve` in a subprocess on free loopback ports, its process tree,
resident memory, Triton's metrics and plain HTTP calls (a uniquely named module: conftest imports are ambiguous)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
        except (OSError, AttributeError):
            pass
    return total / 1024


def http(method: str, url: str, body: dict | bytes | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    """(status, parsed JSON or text) of one HTTP call."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class LiveServer:
    """`python -m nextstep_trt.cli serve ...` in its own session; its log goes to a file."""

    def __init__(self, model_dir: Path, artifacts: Path, log: Path, *extra: str):
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log, self.triton_log = log, log.with_name(log.name + ".triton")
        self.argv = [sys.executable, "-m", "nextstep_trt.cli", "serve", "--model", str(model_dir), "--artifacts",
                     str(artifacts), "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                     "--metrics-port", str(self.metrics_port), "--threads", "1",
                     "--log-file", str(self.triton_log), *extra]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def ports(self) -> list[int]:
        return [self.http_port, self.grpc_port, self.metrics_port]

    def start(self, timeout: float = 120) -> "LiveServer":
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:           # Triton answers ready, and serve has seen it too (its own "ready on" line)
                ready = http("GET", f"{self.url}/v2/health/ready", timeout=2)[0] == 200
                if ready and "serve: ready on" in self.own_output():
                    return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"serve not ready after {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        """What serve printed, then Triton's own log."""
        triton = self.triton_log.read_text(errors="replace") if self.triton_log.exists() else ""
        return self.log.read_text(errors="replace") + triton

    def own_output(self) -> str:
        """Only what `nextstep-trt serve` itself printed."""
        return self.log.read_text(errors="replace")

    def tree(self) -> set[int]:
        return {self.proc.pid} | descendants(self.proc.pid)

    def metric(self, name: str, model: str) -> float:
        """One counter of one model from Triton's Prometheus endpoint."""
        text = http("GET", f"http://127.0.0.1:{self.metrics_port}/metrics")[1]
        for line in text.splitlines():
            if line.startswith(name + "{") and f'model="{model}"' in line:
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {name} for {model} in the metrics")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the serve process; SIGKILL its whole session if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise

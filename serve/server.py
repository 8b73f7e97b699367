"""Run the Triton Inference Server that the PyTriton wheel ships, on a model repository from ``nextstep_trt.serve.repo``.

PyTriton's own ``Triton.bind`` is not used: its callables cannot fail one request of a batch without failing the
others (a bad request would sink its batch-mates), and its errors are Python tracebacks. The stock Python backend
can, so ``serve`` runs exactly the repository a GPU deployment runs. The backend stub links libpython3.11; it gets
the running interpreter's own (LD_LIBRARY_PATH), and this interpreter's bin folder first on PATH so it finds the
same environment (toolchain notes).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nextstep_trt.core.errors import UserError

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServerOptions:
    """Where Triton listens and how it logs."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    gpu_metrics: bool = False
    log_verbose: int = 0
    exit_timeout_s: int = 20
    log_file: Path | None = None         # Triton's own output goes here (None: to this terminal)

    @property
    def probe_host(self) -> str:
        """Where to reach the server from this machine."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.http_port, self.grpc_port, self.metrics_port


def triton_dist() -> tuple[Path, Path, Path]:
    """(tritonserver binary, its libraries, the Python backend stub for this interpreter) from the PyTriton wheel."""
    try:
        import pytriton
        from pytriton.utils.distribution import get_libs_path
    except ImportError:
        raise UserError("serving needs PyTriton: pip install 'nextstep-trt[serve]'") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    binary, stub = root / "bin" / "tritonserver", root / "python_backend_stubs" / version / "triton_python_backend_stub"
    for path in (binary, stub):
        if not path.is_file():
            raise UserError(f"the PyTriton wheel has no {path.relative_to(root)} (Python {version})")
    return binary, Path(get_libs_path()), stub


def prepare_backends(workdir: Path) -> Path:
    """A backend folder with PyTriton's Python backend and the stub built for this Python version."""
    import pytriton

    _, _, stub = triton_dist()
    src = Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python"
    dst = Path(workdir) / "backends" / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        os.symlink(src / name, dst / name)
    shutil.copy2(stub, dst / "triton_python_backend_stub")
    return dst.parent


def server_env() -> dict[str, str]:
    """This environment plus the interpreter's libpython, the wheel's libraries and this Python's bin on PATH."""
    _, libs, _ = triton_dist()
    env = os.environ.copy()
    parts = [sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in parts if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def server_command(repo: Path, backends: Path, opts: ServerOptions) -> list[str]:
    """tritonserver's arguments: every endpoint bound to ``opts.host``, models loaded at start, strict readiness."""
    binary, _, _ = triton_dist()
    flags = {"model-repository": repo, "backend-directory": backends, "model-control-mode": "none",
             "http-address": opts.host, "http-port": opts.http_port, "grpc-address": opts.host,
             "grpc-port": opts.grpc_port, "metrics-address": opts.host, "metrics-port": opts.metrics_port,
             "allow-gpu-metrics": str(opts.gpu_metrics).lower(), "strict-readiness": "true",
             "exit-on-error": "true", "exit-timeout-secs": opts.exit_timeout_s, "log-verbose": opts.log_verbose,
             "disable-auto-complete-config": None}
    return [str(binary)] + [f"--{k}" if v is None else f"--{k}={v}" for k, v in flags.items()]


def check_ports_free(host: str, ports) -> None:
    """Refuse to start on a port something already listens on."""
    for port in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as err:
                raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the serve process dies, so Triton is never orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class TritonProcess:
    """tritonserver as a child process in its own session; stop() shuts it down and waits."""

    def __init__(self, repo: Path, backends: Path, opts: ServerOptions):
        self.opts = opts
        self.command = server_command(repo, backends, opts)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "TritonProcess":
        check_ports_free(self.opts.host, self.opts.ports)
        out = None
        if self.opts.log_file is not None:
            try:
                out = open(self.opts.log_file, "ab")
            except OSError as err:
                raise UserError(f"cannot write the Triton log {self.opts.log_file}: {err.strerror}") from None
        try:
            self.proc = subprocess.Popen(self.command, env=server_env(), start_new_session=True,
                                         preexec_fn=_die_with_parent, stdout=out, stderr=subprocess.STDOUT if out
                                         else None)
        finally:
            if out is not None:
                out.close()                  # the child holds its own descriptor
        return self

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of Triton's log file ("" when it logs to the terminal)."""
        if self.opts.log_file is None or not Path(self.opts.log_file).is_file():
            return ""
        text = Path(self.opts.log_file).read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def ready(self) -> bool:
        url = f"http://{_url_host(self.opts.probe_host)}:{self.opts.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until every model is ready; a UserError if Triton exits or the time runs out."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                where = f"the end of its log {self.opts.log_file}:\n{self.log_tail()}" if self.opts.log_file \
                    else "its log is above"
                raise UserError(f"tritonserver exited with code {self.proc.returncode} before it was ready ({where})")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise UserError(f"tritonserver was not ready after {timeout:.0f} s")

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM (Triton unloads its models and their stub processes), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout or self.opts.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

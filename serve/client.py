"""A small tritonclient wrapper for nextstep_t2i / nextstep_edit over HTTP or gRPC, and a concurrent load run."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

from nextstep_trt.core.errors import UserError

from .limits import EDIT_MODEL, INPUTS, T2I_MODEL

_NP = {"STRING": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "UINT8": np.uint8}


@dataclass(frozen=True)
class ImageRequest:
    """One image; fields left None take the server's defaults. An ``image`` makes it an edit."""

    prompt: str
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    seed: int | None = None
    cfg: float | None = None
    negative_prompt: str | None = None
    image: np.ndarray | None = None       # uint8 [H,W,3]
    cfg_img: float | None = None

    @property
    def model(self) -> str:
        return T2I_MODEL if self.image is None else EDIT_MODEL

    def arrays(self) -> dict[str, np.ndarray]:
        """The request's tensors with their batch dim of 1, typed as the model declares them."""
        out = {}
        for decl in INPUTS[self.model]:
            value = getattr(self, decl.name, None)
            if value is None:
                continue
            if decl.name == "image":
                out["image"] = np.ascontiguousarray(value, np.uint8)[None]
            elif decl.dtype == "STRING":
                out[decl.name] = np.array([[value.encode("utf-8")]], dtype=np.object_)
            else:
                out[decl.name] = np.array([[value]], dtype=_NP[decl.dtype])
        return out


def parse_url(url: str) -> tuple[str, str, bool]:
    """(protocol "http" | "grpc", "host:port", ssl) from http://, https:// or grpc:// URLs."""
    u = urlparse(url if "://" in url else f"http://{url}")
    if u.scheme not in ("http", "https", "grpc") or not u.hostname:
        raise UserError(f"--url must look like http://HOST:PORT or grpc://HOST:PORT, got {url!r}")
    default = 8001 if u.scheme == "grpc" else 8000
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return ("grpc" if u.scheme == "grpc" else "http"), f"{host}:{u.port or default}", u.scheme == "https"


class Client:
    """One connection; not shared across threads (make one per thread)."""

    def __init__(self, url: str, timeout: float = 600.0):
        self.protocol, self.address, ssl = parse_url(url)
        self.timeout = timeout
        if self.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self.tc = tc
        if self.protocol == "grpc":
            self.client = tc.InferenceServerClient(self.address)
        else:
            self.client = tc.InferenceServerClient(self.address, ssl=ssl, connection_timeout=timeout,
                                                   network_timeout=timeout)

    def infer(self, req: ImageRequest) -> np.ndarray:
        """The image, uint8 [H,W,3]; a UserError carries the server's message."""
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for name, array in req.arrays().items():
            tensor = self.tc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        extra = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self.client.infer(req.model, inputs, outputs=[self.tc.InferRequestedOutput("image")], **extra)
        except InferenceServerException as err:
            raise UserError(f"{req.model}: {err.status() or ''} {err.message()}".strip()) from None
        except OSError as err:
            raise UserError(f"cannot reach the server at {self.address}: {err.strerror or err}") from None
        return result.as_numpy("image")[0]

    def wait_ready(self, model: str, seconds: float) -> None:
        """Poll until ``model`` is ready (a server still starting), up to ``seconds``; a UserError after that."""
        import time

        end = time.monotonic() + seconds
        while True:
            try:
                if self.client.is_model_ready(model):
                    return
            except Exception:  # noqa: BLE001 - refused connections and 503s while Triton starts
                pass
            if time.monotonic() >= end:
                raise UserError(f"{model} at {self.address} was not ready after {seconds:g} s")
            time.sleep(0.5)

    def close(self) -> None:
        self.client.close()


@dataclass
class LoadResult:
    """Latencies of a concurrent run; prints itself as one table row."""

    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def to_dict(self) -> dict:
        return {"concurrency": self.concurrency, "requests": len(self.latencies), "errors": self.errors,
                "seconds": round(self.seconds, 3), "rps": round(self.rps, 2),
                "p50_ms": round(1000 * self.percentile(50), 1), "p95_ms": round(1000 * self.percentile(95), 1)}

    def row(self) -> str:
        d = self.to_dict()
        return (f"{d['concurrency']:>11} {d['requests']:>8} {d['errors']:>6} {d['rps']:>8.2f} "
                f"{d['p50_ms']:>8.1f} {d['p95_ms']:>8.1f}")


def run_load(url: str, requests: list[ImageRequest], concurrency: int) -> LoadResult:
    """Send every request from ``concurrency`` threads (one client each); time each and the whole run."""
    local = threading.local()
    clients: list[Client] = []

    def one(req: ImageRequest) -> float | None:
        if not hasattr(local, "client"):
            local.client = Client(url)
            clients.append(local.client)
        start = time.perf_counter()
        try:
            local.client.infer(req)
        except UserError:
            return None
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = list(pool.map(one, requests))
    result = LoadResult(concurrency, time.perf_counter() - start, [t for t in times if t is not None],
                        sum(t is None for t in times))
    for c in clients:
        c.close()
    return result

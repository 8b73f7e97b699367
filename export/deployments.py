"""Which file of a precision each runtime reads (torch-free).

Most precisions are one graph file per graph (the manifest entry's ``file``). Weight-only int4/int8 graphs are two
files holding the same quantized weights: the entry's ``file`` is the ONNX Runtime graph (com.microsoft
MatMulNBits, fp32 activations) and ``deployments.tensorrt.file`` the TensorRT graph (blocked DequantizeLinear, bf16
activations); both are in the entry's ``hashes``, so ``Manifest.verify`` checks both.
"""
from __future__ import annotations

from pathlib import Path

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.paths import inside
from nextstep_trt.core.precision import Precision

from .manifest import Manifest


def tensorrt_graph(manifest: Manifest, graph: str, precision: Precision) -> tuple[Path, str]:
    """The graph file TensorRT builds from and its recorded sha256 (its bytes checked against the manifest)."""
    precision = Precision(precision)
    entry = manifest.entry(graph, precision)
    trt = entry.get("deployments", {}).get("tensorrt")
    if trt is None:
        if precision.weight_only:
            raise UserError(f"{manifest.root}: the {precision.value} {graph} entry names no TensorRT graph: "
                            f"re-run `nextstep-trt quantize --precision {precision.value}`")
        path = manifest.path(graph, precision)
        return path, entry.get("sha256", "")
    manifest.verify({graph: precision})
    what = f"{manifest.root}/manifest.json: {graph} [{precision.value}] deployments.tensorrt"
    path = inside(manifest.root, trt["file"], what, hidden=False)
    sha = entry.get("hashes", {}).get(Path(trt["file"]).as_posix())
    if not path.is_file() or not sha:
        raise UserError(f"{what}: {path} is missing or has no recorded sha256: re-run quantize")
    return path, sha

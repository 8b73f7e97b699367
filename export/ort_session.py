"""ONNX Runtime sessions with the settings measured best on small CPU graphs (torch-free)."""
from __future__ import annotations

from pathlib import Path

from nextstep_trt.core.errors import UserError


def providers_for(device: str) -> list[str]:
    """'cpu' or 'cuda' -> an execution provider list; CUDA must be available when asked for."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError("the CUDA execution provider is not available (install onnxruntime-gpu on a GPU machine)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def make_session(path: str | Path, device: str = "cpu", threads: int = 0, profile_prefix: str | None = None):
    """An InferenceSession; a missing or unreadable graph is a UserError naming the file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"graph {path} does not exist")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Threads spin between the ops of a run (fast) but not after it: otherwise an idle session's pool keeps spinning
    # while the next graph runs (the loop alternates backbone, head, VAE; the bench interleaves many graphs) and
    # takes its cores -- measured: a 5.4 ms int4 decode step took 11-12 ms beside one other idle session.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers_for(device))
    except Exception as err:  # ORT raises its own exception types for bad graphs
        raise UserError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0][:300]}") from None

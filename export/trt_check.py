"""Parse an ONNX file with the TensorRT(-RTX) ONNX parser, no GPU needed (torch-free). design.md §5.

TensorRT-RTX parses (and builds) without a GPU, so CI catches parser failures on the CPU. Errors carry the
failing ONNX node's name; the parser's log goes to a collecting logger, not to stderr.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nextstep_trt.core.errors import UserError

FLAVORS = {"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
           "INT8": "int8", "UINT8": "uint8", "BOOL": "bool", "FP8": "float8_e4m3fn", "INT4": "int4",
           "FP4": "float4_e2m1"}
# Lines the CPU-only parser adds to messages because no CUDA driver is present: noise, not the node's problem.
_NOISE = ("catchCudaError", "cudaError 35")


@dataclass
class ParseResult:
    ok: bool
    errors: list[tuple[str, str]]                    # (ONNX node name, message)
    num_layers: int
    inputs: list[tuple[str, str, tuple]] = field(default_factory=list)    # (name, dtype, shape); -1 = dynamic
    outputs: list[tuple[str, str, tuple]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, flavor: str = "tensorrt-rtx") -> str:
        """A readable summary: status, then the parsed network's I/O or the errors by node."""
        status = f"ok, {self.num_layers} layers" if self.ok else f"FAILED, {len(self.errors)} error(s)"
        lines = [f"{flavor} parse: {status}"]
        for node, message in self.errors:
            lines.append(f"  {node or '<model>'}: {message}")
        for kind, items in (("input", self.inputs), ("output", self.outputs)):
            for name, dtype, shape in items:
                lines.append(f"  {kind:<6}  {name:<24} {dtype:<9} {list(shape)}")
        return "\n".join(lines)


def import_flavor(flavor: str):
    """The TensorRT flavour's Python module; a UserError with the pip command when it is missing."""
    if flavor not in FLAVORS:
        raise UserError(f"unknown TensorRT flavor {flavor!r}; choose from {', '.join(FLAVORS)}")
    try:
        return importlib.import_module(FLAVORS[flavor])
    except (ImportError, OSError) as err:
        raise UserError(f"{flavor} is not installed: pip install {flavor} ({type(err).__name__})") from err


def _logger(trt):
    class Collecting(trt.ILogger):
        """Keeps the parser's messages instead of printing them."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []
            self.errors: list[str] = []              # ERROR and INTERNAL_ERROR messages only

        def log(self, severity, msg):
            self.messages.append(msg)
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)

    return Collecting()


def _network(trt, builder):
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return builder.create_network(0 if flag is None else 1 << int(flag))


def _clean(desc: str) -> str:
    lines = [ln.strip() for ln in desc.splitlines() if ln.strip() and not any(n in ln for n in _NOISE)]
    return " | ".join(lines)


def _node_label(err, path: Path) -> str:
    """The failing node's name; for an unnamed node, ``#index Op -> output`` from the ONNX file."""
    name, index = err.node_name(), err.node()
    if name or index < 0:
        return name
    from .lint import load_model

    nodes = load_model(path).graph.node
    if index >= len(nodes):
        return f"#{index}"
    node = nodes[index]
    return node.name or f"#{index} {node.op_type} -> {node.output[0] if node.output else '?'}"


def _error(err, path: Path) -> tuple[str, str]:
    op = err.node_operator()
    code = getattr(err.code(), "name", str(err.code()))
    message = f"{op + ': ' if op else ''}{_clean(err.desc())} ({code})"
    return _node_label(err, path), message


def _io(trt, tensors) -> list[tuple[str, str, tuple]]:
    return [(t.name, _DTYPES.get(t.dtype.name, t.dtype.name.lower()), tuple(t.shape)) for t in tensors]


@dataclass
class ParsedNetwork:
    """A parsed network with the objects that must outlive it (the parser owns the weights) until it is built."""

    trt: object
    logger: object
    builder: object
    network: object
    parser: object
    result: ParseResult


def parse_network(path: str | Path, flavor: str = "tensorrt-rtx") -> ParsedNetwork:
    """Parse ``path`` into a strongly typed network; errors name the failing ONNX node."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {'a folder, not an ONNX file' if path.is_dir() else 'no such file'}")
    trt = import_flavor(flavor)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = _network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    ok = bool(parser.parse_from_file(str(path)))
    errors = [_error(parser.get_error(i), path) for i in range(parser.num_errors)]
    inputs = _io(trt, [network.get_input(i) for i in range(network.num_inputs)])
    outputs = _io(trt, [network.get_output(i) for i in range(network.num_outputs)])
    result = ParseResult(ok and not errors, errors, network.num_layers, inputs, outputs)
    return ParsedNetwork(trt, logger, builder, network, parser, result)


def trt_parse(path: str | Path, flavor: str = "tensorrt-rtx") -> ParseResult:
    """Parse ``path`` into a strongly typed network; errors name the failing ONNX node."""
    return parse_network(path, flavor).result

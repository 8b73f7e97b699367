"""nextstep-trt: export, build, run and verify NextStep-1 with ONNX Runtime and TensorRT."""

__version__ = "0.1.0"

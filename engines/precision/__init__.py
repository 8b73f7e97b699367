"""Precision graphs made from the fp32 graphs: fp16/bf16 (ModelOpt AutoCast) and fp8 (per-tensor E4M3 Q/DQ).

design.md §3: TensorRT 11 and TensorRT-RTX are strongly typed, so precision lives in the ONNX graph. Modules:
``naming`` (ONNX nodes -> model parameter names), ``keep`` (what stays fp32), ``ranges`` (fp32 activation ranges),
``calibrate`` (reference inputs over real prompts), ``autocast``, ``fp8``, ``overflow`` (FP16-vs-BF16 report),
``intermediates`` (worst layer), ``run`` (the quantize command's work).
"""

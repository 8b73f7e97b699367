"""Block-wise symmetric weight quantization and its two storage forms (torch-free, numpy).

A weight ``W [K,N]`` (the MatMul layout: K the input dimension) is cut into blocks of ``block`` rows per column;
each block gets one scale ``s = amax / qmax`` (``qmax`` 7 for int4, 127 for int8; ``amax`` the block's largest
|w|, times a clip ratio when the activation-aware search chose one) and codes ``q = clip(rint(w / s), -qmax-1,
qmax)``. Our own quantizer rather than ONNX Runtime's ``MatMulNBitsQuantizer`` (onnxruntime 1.32): it quantizes
MatMul nodes only (the flow head's linears are Gemm), refuses 8-bit weights in the DequantizeLinear form, and its
symmetric mode makes about half the scales negative (``s = m / -8``, m the block's signed extreme: legal, and
TensorRT-RTX 1.7 builds it, but ONNX documents positive scales). ModelOpt's ONNX int4 (0.47) also takes MatMul
nodes only, excludes by node name where our keep-list names parameters, and writes one deployment.

Every scale is rounded UP to a value of ``scale_bits(bits)`` significant bits (``ceil_bits``: 5 for int4, 1 --
a power of two -- for int8), so every product ``q * s`` (the codes need up to 3 / 7 significant bits) is a
bfloat16 value: the TensorRT graph's bf16 ``DequantizeLinear`` and the ONNX Runtime graph's fp32 ``MatMulNBits``
dequantize to the same numbers, bit for bit. Rounding up never pushes a code past ``qmax``; it costs a step up to
1/16 wider for int4 and up to 2x wider for int8 (measured on the tiny model: core/tolerances.py).

Forms: ``nbits`` packs the codes for com.microsoft ``MatMulNBits`` (B ``uint8 [N, K/block, block*bits/8]``,
unsigned codes ``q + 2^(bits-1)`` — the operator's implicit zero point when no zero_points input is given — 4-bit
element 2i in the low nibble); ``dq_tensor`` stores them as ONNX INT4/INT8 for ``DequantizeLinear(axis, block_size)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = (4, 8)


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def scale_bits(bits: int) -> int:
    """Significant bits a scale may have so that q * s is a bfloat16 value (8 significant bits) for every code."""
    return 8 - (bits - 1)


def ceil_bits(x: np.ndarray, keep: int) -> np.ndarray:
    """Positive normal fp32 values rounded up to ``keep`` significant bits (still fp32), by masking the mantissa."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    step = np.uint32(1 << (24 - keep))
    top = u & ~np.uint32(step - 1)
    return np.where(top != u, top + step, top).astype(np.uint32).view(np.float32)


@dataclass(frozen=True)
class Quantized:
    """One weight's codes and scales: q int8 [K,N] (the MatMul layout), scale fp32 [K/block, N] > 0."""

    q: np.ndarray
    scale: np.ndarray
    bits: int
    block: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        """q * s in fp32 [K,N] (exact, and a bfloat16 value: the product has at most 8 significant bits)."""
        k, n = self.q.shape
        blocks = self.q.reshape(k // self.block, self.block, n).astype(np.float32)        # [K/bs,bs,N]
        return (blocks * self.scale[:, None, :]).reshape(k, n)


def block_amax(w: np.ndarray, block: int) -> np.ndarray:
    """max |w| of each block: [K/block, N]."""
    k, n = w.shape
    return np.abs(w.reshape(k // block, block, n)).max(axis=1)                             # [K/bs,N]


def quantize(w: np.ndarray, bits: int, block: int, clip: np.ndarray | None = None) -> Quantized:
    """RTN codes of ``w [K,N]`` (K a multiple of ``block``); ``clip`` [K/block, N] in (0, 1] scales each block's
    amax."""
    w = np.asarray(w, np.float32)
    k, n = w.shape
    amax = block_amax(w, block) * (1.0 if clip is None else clip)
    scale = ceil_bits(np.where(amax > 0, amax / qmax(bits), 1.0).astype(np.float32), scale_bits(bits))
    blocks = w.reshape(k // block, block, n) / scale[:, None, :]                          # [K/bs,bs,N]
    q = np.clip(np.rint(blocks), -qmax(bits) - 1, qmax(bits)).astype(np.int8).reshape(k, n)
    return Quantized(q, scale, bits, block)


def nbits(qw: Quantized) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' B uint8 [N, K/block, block*bits/8] and scales fp32 [N, K/block]."""
    k, n = qw.q.shape
    u = (qw.q.astype(np.int16) + 2 ** (qw.bits - 1)).astype(np.uint8).T                 # [N,K] unsigned codes
    u = u.reshape(n, k // qw.block, qw.block)                                             # [N,K/bs,bs]
    if qw.bits == 4:
        u = u[..., 0::2] | (u[..., 1::2] << 4)                                            # [N,K/bs,bs/2]
    return np.ascontiguousarray(u, np.uint8), np.ascontiguousarray(qw.scale.T)


def from_nbits(b: np.ndarray, scales: np.ndarray, bits: int, block: int, k: int) -> Quantized:
    """The inverse of ``nbits`` (integrity checks read the installed ONNX Runtime graph back)."""
    n = b.shape[0]
    u = np.asarray(b, np.uint8)
    if bits == 4:
        u = np.stack([u & 0x0F, u >> 4], axis=-1).reshape(n, k // block, block)          # [N,K/bs,bs]
    q = (u.reshape(n, k).astype(np.int16) - 2 ** (bits - 1)).astype(np.int8).T           # [K,N]
    return Quantized(np.ascontiguousarray(q), np.ascontiguousarray(np.asarray(scales, np.float32).reshape(n, -1).T),
                     bits, block)


def dq_tensor(qw: Quantized, name: str, transposed: bool = False):
    """The codes as an ONNX INT4/INT8 TensorProto [K,N] (or [N,K] for a Gemm with transB=1)."""
    import ml_dtypes
    from onnx import numpy_helper

    q = np.ascontiguousarray(qw.q.T if transposed else qw.q)
    return numpy_helper.from_array(q.astype(ml_dtypes.int4) if qw.bits == 4 else q, name)


def from_dq(q: np.ndarray, scale: np.ndarray, bits: int, block: int, transposed: bool) -> Quantized:
    """Codes and scales read from a DequantizeLinear's inputs (any float scale dtype) in the MatMul layout."""
    q = np.asarray(q).astype(np.int8)
    scale = np.asarray(scale).astype(np.float32)
    return Quantized(np.ascontiguousarray(q.T if transposed else q),
                     np.ascontiguousarray(scale.T if transposed else scale), bits, block)


def problems(qw: Quantized, w: np.ndarray | None = None, clip: bool = False) -> list[str]:
    """Integrity of one quantized weight: codes in range, scales finite, positive and bf16-exact, and (given the
    source ``w``) every element within half a step of ``w`` (a clipped block: within its clip range)."""
    out = []
    lo, hi = -qmax(qw.bits) - 1, qmax(qw.bits)
    if qw.q.min(initial=0) < lo or qw.q.max(initial=0) > hi:
        out.append(f"codes outside [{lo}, {hi}]")
    s = qw.scale
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        out.append("a scale is not finite and positive")
    elif not np.array_equal(ceil_bits(s, scale_bits(qw.bits)), s):
        out.append(f"a scale has more than {scale_bits(qw.bits)} significant bits (q * s would not be bfloat16)")
    if w is not None and not out:
        err = np.abs(qw.dequantize() - np.asarray(w, np.float32))                          # [K,N]
        k, n = err.shape
        step = np.repeat(qw.scale, qw.block, axis=0)                                      # [K,N]
        if not clip and np.any(err > step * (0.5 + 1e-3)):
            out.append(f"an element is {float((err / step).max()):.3f} steps from its source (RTN bound 0.5)")
        if clip and np.any(err > np.abs(np.asarray(w, np.float32)) + step * (qmax(qw.bits) + 1)):
            out.append("a clipped element is further from its source than its block's range")
    return out

"""Error metrics between a reference tensor and a candidate, and the bounds they are held to (numpy only)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Metrics:
    max_abs: float
    rel_l2: float
    cosine: float
    p999_abs: float          # 99.9th percentile of |out - ref|
    nan: int                 # NaN / Inf count in the candidate
    inf: int
    worst: tuple[int, ...]   # index of the largest |out - ref|
    ref_at_worst: float
    out_at_worst: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare(ref: np.ndarray, out: np.ndarray) -> Metrics:
    """Metrics of ``out`` against ``ref`` (both cast to float64); shapes must match."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"shape {out.shape} does not match the reference {ref.shape}")
    nan, inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
    diff = np.abs(np.nan_to_num(out, nan=np.inf) - ref)
    if diff.size == 0:
        return Metrics(0.0, 0.0, 1.0, 0.0, nan, inf, (), 0.0, 0.0)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    finite = np.isfinite(out)
    ref_norm = float(np.linalg.norm(ref))
    err_norm = float(np.linalg.norm(np.where(finite, out - ref, 0.0)))
    out_norm = float(np.linalg.norm(np.where(finite, out, 0.0)))
    rel = err_norm / ref_norm if ref_norm > 0 else err_norm
    cos = float(np.sum(np.where(finite, out, 0.0) * ref) / (ref_norm * out_norm)) if ref_norm * out_norm > 0 else \
        float(ref_norm == out_norm)
    return Metrics(float(diff.max()), rel if nan + inf == 0 else float("inf"), cos,
                   float(np.percentile(diff, 99.9)), nan, inf, tuple(int(i) for i in worst),
                   float(ref[worst]), float(out[worst]))


def psnr(ref_u8: np.ndarray, out_u8: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    mse = float(np.mean((np.asarray(ref_u8, np.float64) - np.asarray(out_u8, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


@dataclass(frozen=True)
class Bound:
    """Upper bounds on rel-L2 and max-abs, lower bound on cosine; None means not checked. NaN/Inf always fail.
    ``psnr_db`` is the image bound of level 3 (checked on images, not by ``violations``). ``mean_cosine`` bounds
    the mean of a tensor's cosine over all level-1 cases of its graph (``nextstep_trt.core.level1.level1_means``): for
    fp8, where one small tensor's cosine scatters from draw to draw, ``cosine`` is then the per-case floor."""

    rel_l2: float | None = None
    max_abs: float | None = None
    cosine: float | None = None
    psnr_db: float | None = None
    mean_cosine: float | None = None

    def violations(self, m: Metrics) -> list[str]:
        """Each broken bound as 'metric value > bound'."""
        out = [f"{m.nan} NaN and {m.inf} Inf values"] if m.nan or m.inf else []
        if self.rel_l2 is not None and not m.rel_l2 <= self.rel_l2:
            out.append(f"rel_l2 {m.rel_l2:.3g} > {self.rel_l2:g}")
        if self.max_abs is not None and not m.max_abs <= self.max_abs:
            out.append(f"max_abs {m.max_abs:.3g} > {self.max_abs:g} at {list(m.worst)} "
                       f"(ref {m.ref_at_worst:.6g}, got {m.out_at_worst:.6g})")
        if self.cosine is not None and not m.cosine >= self.cosine:
            out.append(f"cosine {m.cosine:.7f} < {self.cosine:g}")
        return out

    def describe(self) -> str:
        parts = [f"rel_l2<={self.rel_l2:g}" if self.rel_l2 is not None else "",
                 f"max_abs<={self.max_abs:g}" if self.max_abs is not None else "",
                 f"cos>={self.cosine:g}" if self.cosine is not None else "",
                 f"mean_cos>={self.mean_cosine:g}" if self.mean_cosine is not None else "",
                 f"psnr>={self.psnr_db:g}dB" if self.psnr_db is not None else ""]
        return " ".join(p for p in parts if p) or "-"

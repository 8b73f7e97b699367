"""What `nextstep-trt quantize` was asked for, and the steps every precision shares: calibration, the log line."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from nextstep_trt.core.errors import CheckFailed
from nextstep_trt.core.precision import KVCache, Precision, check_block_size
from nextstep_trt.export.manifest import Manifest

from .weightonly import Method

if TYPE_CHECKING:                                   # torch-free: the CLI builds options before torch loads
    from nextstep_trt.ref.checkpoint import ModelBundle


@dataclass(frozen=True)
class QuantizeOptions:
    """What `nextstep-trt quantize` was asked for."""

    model_dir: Path
    artifacts: Path
    precision: Precision
    graphs: tuple[str, ...] | None = None      # None: every exported graph the precision applies to
    calib_file: Path | None = None             # extra prompts, one per line
    exclude: tuple[str, ...] | None = None     # fp8/int8/int4: parameter globs kept high precision (None: FP8_EXCLUDE)
    validate: bool = True                      # level 1 against the reference before installing
    block_size: int = 128                      # int4/int8: weights per scale along the input dimension
    method: Method = Method.RTN                # int4/int8: rtn, or awq (clip ratios searched on the calibration)
    accuracy_level: int | None = None          # int4/int8 ONNX Runtime graph; None: from the CPU (cpu_accuracy_level)
    low_memory: bool = False                   # int4/int8: the backbone streamed from the shards (weightonly_lowmem)
    kv_cache: KVCache = KVCache.FP32           # int4/int8 ONNX Runtime backbone: its cache's type (export/ort_kvcache)

    def __post_init__(self):
        check_block_size(self.block_size)            # refused before the model loads


def calibrate(bundle: "ModelBundle", manifest: Manifest, prompts: list[str],
              consumers: dict[str, list], log=print) -> dict:
    """One pass of the reference over the calibration prompts, feeding each graph's consumers; says how long."""
    from .calibrate import record_calibration

    def sink(graph: str, feeds) -> None:
        for consumer in consumers.get(graph, []):
            consumer.update(feeds)

    start = time.perf_counter()
    info = record_calibration(bundle, manifest.profile, prompts, sink)
    info |= {"seconds": round(time.perf_counter() - start, 2)}
    log(f"calibrated on {info['requests']} reference runs over {len(prompts)} prompts in {info['seconds']} s")
    return info


def validation_text(summary: dict) -> str:
    """Level 1 in one phrase, from the manifest's validation summary (nextstep_trt.export.run._summary)."""
    means = summary.get("mean_cosine", {})
    text = (f"level 1 over {summary['cases']} cases: worst rel-L2 {summary['worst_rel_l2']:.2e}, "
            f"lowest cos {summary['lowest_cosine']:.6f}")
    return text + (f", lowest mean cos {min(means.values()):.6f}" if means else "")


def install_each(names: list[str], precision: Precision, install: Callable[[str], str], log=print) -> None:
    """``install(graph)`` for every graph, logging the line it returns; a graph that fails its checks is logged as
    not installed and the next one is still made; then one CheckFailed names the first failure (exit 1)."""
    failed = []
    for g in names:
        try:
            log(install(g))
        except CheckFailed as err:
            log(f"{g} [{precision.value}]: NOT installed: {err}")
            failed.append(str(err))
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(names)} {precision.value} graphs failed validation and were not "
                          f"installed; first: {failed[0]}")

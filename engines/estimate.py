"""Memory and disk each step needs for one model, from its config and the default deployment profile, and whether
this machine can do it (torch-free). ``nextstep-trt doctor --model DIR`` appends these sections.

Factors are measured on this project's CPU machines (the numbers of scripts/large_export.sh and toolchain notes):
they are estimates, good to tens of percent, meant to say early that a step cannot fit.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from nextstep_trt.core.resources import GB, count_text, free_disk, free_ram, size_text

from .doctor import BUILD_BASELINE, BUILD_PEAK_FACTOR, Section
from .footprint import decode_step_bytes, gpu_format, graph_bytes

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
TORCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Measured at NextStep-1-Large size on this 2-core machine (scripts/large_export.sh, bf16 checkpoint); the estimates
# came out within 10% (backbone, whole export, init) to 30% high (head_step, VAE) of the measured peaks:
BASE_RSS = 0.6 * GB              # python + torch + onnx + onnxruntime imported
INIT_RSS = 0.45 * GB             # init-model without the VAE: imports + one 64 MB chunk in two dtypes (0.75 GB total)
TRACE_PER_LAYER = 0.032 * GB     # meta-device torch.export of one decoder layer (Large backbone: 2.13 GB peak)
SPOT_LAYER_FACTOR = 1.0          # layer spot check, x one layer's fp32 weights (Large: 1.70 GB peak)
SMALL_GRAPH_FACTOR = 10          # ordinary trace + folding + check of a head/VAE graph, x its weights (Large bf16:
                                 # head_sampler 3.55 GB, head_step 2.83 GB for 0.31 GB; fp32 head_step 5.06 GB)
CONVERT_FACTOR = 3               # AutoCast / Q-DQ conversion: onnx.load of the fp32 graph + the converted copy
QUANT_LINEAR_FACTOR = 3          # quantize --low-memory: x the largest linear's fp32 weights (read, transposed,
                                 # quantized, read back and compared one linear at a time)
RUNTIME_IO_BYTES = 4             # KV cache and activations cross the graph boundary in float32 (the spec)


@dataclass(frozen=True)
class Step:
    name: str
    ram: float                   # peak bytes of host memory
    disk: float                  # bytes written
    note: str = ""


def _params(cfg) -> dict[str, int]:
    from nextstep_trt.export.profile import DeploymentProfile
    from nextstep_trt.export.sizes import graph_parameters
    from nextstep_trt.ref.weights import model_shapes, vae_shapes

    out = dict(graph_parameters(cfg, DeploymentProfile()))
    out["checkpoint"] = sum(math.prod(s) for s in model_shapes(cfg).values())
    out["vae"] = sum(math.prod(s) for s in vae_shapes(cfg.vae).values())
    bb = cfg.backbone
    out["layer"] = (bb.hidden_size * (bb.num_heads + 2 * bb.num_kv_heads) * bb.head_dim * 2
                    + 3 * bb.hidden_size * bb.intermediate_size)
    return out


def kv_cache_bytes(cfg, profile=None) -> int:
    """Host/device bytes of the KV cache at the profile's capacity and largest batch (both CFG rows)."""
    from nextstep_trt.export.profile import DeploymentProfile

    profile = profile or DeploymentProfile()
    bb = cfg.backbone
    rows, cap = profile.cfg_rows * profile.max_batch, profile.kv_capacity(cfg.pixels_per_token)
    return 2 * bb.num_layers * rows * bb.num_kv_heads * cap * bb.head_dim * RUNTIME_IO_BYTES


def _export_steps(cfg, p: dict[str, int], checkpoint_dtype: str) -> list[Step]:
    """The ordinary export, and the low-memory export per graph and as one run, at bf16 and fp32."""
    steps = [Step("export (ordinary, whole model in memory)", BASE_RSS + 2.5 * p["checkpoint"] * 4,
                  (p["backbone"] + p["head_step"] * 3 + p["vae"]) * 4, "loads every weight in fp32")]
    for d in ("bf16", "fp32"):
        linked = d == checkpoint_dtype
        backbone = BASE_RSS + max(cfg.backbone.num_layers * TRACE_PER_LAYER, SPOT_LAYER_FACTOR * p["layer"] * 4)
        small = {g: BASE_RSS + SMALL_GRAPH_FACTOR * p[g] * BYTES[d] for g in ("head_step", "head_sampler", "vae_decoder")}
        disk = (0 if linked else p["backbone"] * BYTES[d]) + (3 * p["head_step"] + p["vae"]) * BYTES[d]
        steps.append(Step(f"export --low-memory --dtype {d}: backbone", backbone,
                          0 if linked else p["backbone"] * BYTES[d],
                          "hard links into the shards" if linked else f"converted {checkpoint_dtype} -> {d}"))
        steps += [Step(f"export --low-memory --dtype {d}: {g}", ram, p[g] * BYTES[d]) for g, ram in small.items()]
        steps.append(Step(f"export --low-memory --dtype {d}: all graphs in one run",
                          max(backbone, *small.values()) + (p["head_step"] + p["vae"]) * BYTES[d], disk))
    return steps


def estimate_steps(cfg, checkpoint_dtype: str) -> list[Step]:
    """Every step's peak memory and disk for this model."""
    p = _params(cfg)
    steps = [Step(f"init-model --dtype {d}", INIT_RSS + 1.5 * p["vae"] * BYTES[d],
                  (p["checkpoint"] + p["vae"]) * BYTES[d]) for d in ("bf16", "fp32")]
    steps += _export_steps(cfg, p, checkpoint_dtype)
    for d in ("bf16", "fp8"):
        steps.append(Step(f"precision {d} from the fp32 backbone graph", BASE_RSS + CONVERT_FACTOR * p["backbone"] * 4,
                          p["backbone"] * (4 + BYTES[d]), "the fp32 graph first, then the converted one" + (
                              "; export --low-memory --dtype bf16 writes bf16 directly" if d == "bf16" else "")))
    for d in ("bf16", "fp8"):
        w = p["backbone"] * BYTES[d]
        steps.append(Step(f"TensorRT build: backbone {d}", max(BUILD_PEAK_FACTOR * w, BUILD_BASELINE), w,
                          f"{BUILD_PEAK_FACTOR}x weights, at least {size_text(BUILD_BASELINE)}, toolchain notes; "
                          "the plan is about the weights' size"))
    steps += _weight_only_steps(cfg, p)
    kv = kv_cache_bytes(cfg)
    for d in ("bf16", "fp8", "int8", "int4"):
        w = sum(graph_bytes(cfg, gpu_format(d)).values())
        steps.append(Step(f"runtime {d} (weights + KV cache {size_text(kv)})", w + kv, 0,
                          "device memory on a GPU; host memory for ONNX Runtime on the CPU"))
    return steps


def _weight_only_steps(cfg, p: dict[str, int]) -> list[Step]:
    """quantize --precision int8/int4 --low-memory of the backbone: two meta-device traces and one linear at a time
    in memory; on disk both deployments (codes + a scale per 32 weights each) and the kept weights in fp32 and bf16."""
    bb = cfg.backbone
    linears = p["layer"] * bb.num_layers
    kept = p["backbone"] - linears
    largest = 2 * bb.hidden_size * bb.intermediate_size * 4                       # the fused gate/up in fp32
    ram = BASE_RSS + 2 * bb.num_layers * TRACE_PER_LAYER + QUANT_LINEAR_FACTOR * largest
    head = BASE_RSS + SMALL_GRAPH_FACTOR * p["head_step"] * 4              # Large int8: 6.80 GB measured
    out = []
    for name, bits in (("int8", 8), ("int4", 4)):
        out.append(Step(f"quantize --precision {name} --low-memory: backbone", ram,
                        2 * (linears * bits / 8 + linears / 32 * 4) + kept * (4 + 2),
                        "streamed from the shards; both deployments, block 32"))
        out.append(Step(f"quantize --precision {name} --low-memory: head_step", head,
                        p["head_step"] * 4, "in memory, from its fp32 --low-memory export; both deployments "
                        "about the fp32 graph's size (Large int4 0.64 GB, int8 0.69 GB)"))
    return out


EDGE_PROFILE = {"max_batch": 1, "edit": False}      # export --max-batch 1 --no-edit: the smallest KV cache
FIT_PRECISIONS = ("bf16", "fp8", "int8", "int4")


def gpu_sections(cfg) -> list[Section]:
    """Per precision: weight bytes, which data-sheet GPUs it fits at the default and the edge profile (the
    runtime's fp32 KV cache at the profile's capacity and largest batch), and the HBM floor of a decode step."""
    from nextstep_trt.export.profile import DeploymentProfile

    from .gpus import DATASHEET, RESERVE, fit_text

    profiles = {"default profile": DeploymentProfile(), "edge profile (--max-batch 1 --no-edit)":
                DeploymentProfile(**EDGE_PROFILE)}
    kv = {name: kv_cache_bytes(cfg, prof) for name, prof in profiles.items()}
    s = Section(f"GPU memory per precision (TensorRT weights: int8/int4 block-wise, 8/4 bits per weight + one fp16 "
                f"scale per 32 weights, kept layers bf16; fits = weights + fp32 KV cache + {size_text(RESERVE)} "
                "reserve <= the card's memory; a '12 GB' card holds 12 x 2^30 bytes = 12.9 GB)")
    prof = DeploymentProfile()
    tokens, rows = prof.max_image_tokens(cfg.pixels_per_token), 2
    for d in FIT_PRECISIONS:
        fmt = gpu_format(d)
        g = graph_bytes(cfg, fmt)
        w = sum(g.values())
        s.add(f"{d} weights", f"{size_text(w)} (backbone {size_text(g['backbone'])}, head {size_text(g['head'])}, "
                              f"VAE decoder {size_text(g['vae'])})" + (f"; {fmt.note}" if fmt.note else ""))
        for name in profiles:
            s.add(f"{d} fits, {name}", f"KV cache {size_text(kv[name])}, {fit_text(d, w, kv[name])}")
        step = decode_step_bytes(cfg, fmt, rows, tokens + 64, 2)
        s.add(f"{d} HBM floor, decode step (batch 1, bf16 KV)",
              f"reads {size_text(step)}: " + ", ".join(f"{gpu.name} {step / (gpu.gbps * 1e9) * 1e3:.3g} ms"
                                                      for gpu in DATASHEET))
    return [s]


def verdict(step: Step, ram: int, disk: int) -> str:
    """'yes' or 'no: <which resource is short, with the numbers>'."""
    short = []
    if step.ram > ram:
        short.append(f"needs {size_text(step.ram)} RAM, {size_text(ram)} free")
    if step.disk > disk:
        short.append(f"needs {size_text(step.disk)} disk, {size_text(disk)} free")
    return "no: " + "; ".join(short) if short else "yes"


def checkpoint_dtype(model_dir: Path) -> str:
    """The checkpoint's storage dtype from config.json (float32 when it does not say)."""
    raw = json.loads((model_dir / "config.json").read_text()).get("torch_dtype", "float32")
    return TORCH_DTYPES.get(raw, "fp32")


def model_sections(model_dir: str | Path) -> list[Section]:
    """The doctor sections for one model folder: per-step estimates and whether this machine can do each."""
    from nextstep_trt.ref.config import load_config

    model_dir = Path(model_dir)
    cfg, dtype = load_config(model_dir), checkpoint_dtype(model_dir)
    ram, disk = free_ram(), free_disk(model_dir)
    params = _params(cfg)["checkpoint"]
    head = Section(f"model {model_dir} ({count_text(params)} parameters, {dtype} checkpoint)")
    head.add("free RAM (MemAvailable)", size_text(ram)).add(f"free disk at {model_dir}", size_text(disk))
    steps = Section("estimated peak RAM / disk written per step, and whether this machine can do it")
    for s in estimate_steps(cfg, dtype):
        note = f" ({s.note})" if s.note else ""
        steps.add(s.name, f"RAM ~{size_text(s.ram)}, disk ~{size_text(s.disk)}: {verdict(s, ram, disk)}{note}")
    return [head, steps, *gpu_sections(cfg)]


def model_report(model_dir: str | Path) -> str:
    """The same sections as plain text."""
    from .doctor import format_report

    return format_report(model_sections(model_dir))

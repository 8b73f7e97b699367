"""demo: the main job on an embedded tiny model — build, export, validate, generate, print a parity table."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

HELP = {"demo": "tiny model end to end: init, export, validate, build engines, generate (ONNX Runtime + reference), "
                "parity"}
PROMPT = "a photo of a red fox in the snow"
RESOLUTIONS = "32x32,48x32,64x64"


def add_arguments(name: str, p) -> None:
    p.add_argument("--out", default="nextstep-demo", help="output folder (default: ./nextstep-demo)")
    p.add_argument("--steps", type=int, default=3, help="sampler steps (fixed in the exported sampler)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of generation")


def _timed(log: dict, key: str, fn):
    start = time.perf_counter()
    result = fn()
    log[key] = round(time.perf_counter() - start, 3)
    return result


def _build_engines(artifacts: Path, timing: dict) -> list[dict]:
    """TensorRT-RTX engines of every fp32 graph for compute capability 8.9 (ahead of time: no GPU needed)."""
    try:
        from nextstep_trt.engines.builder import BuildOptions, resolve_target
        from nextstep_trt.engines.cache import build_engine
        from nextstep_trt.export.trt_check import import_flavor

        import_flavor("tensorrt-rtx")
    except Exception as err:  # the engine step is optional: the demo still runs the ONNX Runtime path
        print(f"[3/6] TensorRT-RTX engines: skipped ({str(err).splitlines()[0]})")
        return []
    print("[3/6] TensorRT-RTX engines for compute capability 8.9 (built ahead of time, no GPU needed)")
    from nextstep_trt.export.manifest import Manifest

    opts = BuildOptions("tensorrt-rtx", "8.9")
    target = resolve_target(opts)
    start = time.perf_counter()
    rows = [build_engine(artifacts, g, "fp32", opts, target).row() for g in Manifest.load(artifacts).graphs]
    timing["build_engines_s"] = round(time.perf_counter() - start, 3)
    for r in rows:
        print(f"      {r['graph']:<18} {r['plan_mib']:6.2f} MiB plan, {r['seconds']:.2f} s")
    return rows


def run(args) -> int:
    from nextstep_trt.commands.export import parse_resolutions
    from nextstep_trt.core.fileio import write_json
    from nextstep_trt.export.profile import DeploymentProfile
    from nextstep_trt.export.run import ExportOptions, export_all
    from nextstep_trt.ref.checkpoint import init_random, load_model, save_model_folder
    from nextstep_trt.ref.config import tiny
    from nextstep_trt.ref.options import GenerationOptions
    from nextstep_trt.ref.pipeline import generate_image
    from nextstep_trt.ref.sampling import SamplerConfig
    from nextstep_trt.runtime.loop import Request, run_request
    from nextstep_trt.runtime.ort_backend import OrtBackend
    from nextstep_trt.runtime.reference import LiveReference
    from nextstep_trt.runtime.verify import verify_backend

    out = Path(args.out)
    timing: dict[str, float] = {}
    sampler = SamplerConfig(steps=args.steps, shift=1.0, use_norm=True)
    profile = DeploymentProfile(max_batch=4, max_text_tokens=32, resolutions=parse_resolutions(RESOLUTIONS),
                                t2i_sampler=sampler, edit=False)     # text to image: the editing graphs are skipped
    print(f"[1/6] tiny random-weight model -> {out / 'model'}")
    _timed(timing, "init_model_s", lambda: save_model_folder(out / "model", tiny(), *init_random(tiny(), args.seed),
                                                              max_shard_bytes=2**17))
    bundle = load_model(out / "model")
    print(f"[2/6] export + level-1 validation -> {out / 'artifacts'}")
    _timed(timing, "export_s", lambda: export_all(ExportOptions(out / "model", out / "artifacts", profile=profile),
                                                  bundle))
    engines = _build_engines(out / "artifacts", timing)
    opts = GenerationOptions(height=64, width=64, cfg=2.0, steps=args.steps, seed=args.seed)
    print("[4/6] generate with ONNX Runtime and with the PyTorch reference")
    with OrtBackend(out / "artifacts") as backend:
        ort_pixels = _timed(timing, "generate_onnxruntime_s",
                            lambda: run_request(backend, bundle.tokenizer, Request([PROMPT], opts)))
        print("[5/6] parity, levels 1-3")
        report = _timed(timing, "verify_s", lambda: verify_backend(backend, LiveReference(bundle, profile), "fp32",
                                                                   log=lambda *_: None))
    ref_images = _timed(timing, "generate_torch_s", lambda: generate_image(bundle, PROMPT, **vars(opts)))
    from PIL import Image

    Image.fromarray(ort_pixels[0]).save(out / "onnxruntime.png")
    ref_images[0].save(out / "torch.png")
    from nextstep_trt.core.metrics import psnr

    demo_psnr = psnr(np.asarray(ref_images[0]), ort_pixels[0])
    timing_note = f"demo image 64x64: ONNX Runtime vs PyTorch reference PSNR {demo_psnr:.1f} dB"
    print("[6/6] report")
    print("worst case per graph and level (every row: report.txt):")
    print(report.worst_per_graph().table())
    print(f"{len(report.rows)} checks, {len(report.failures())} failed")
    print(timing_note)
    print("timing (s): " + json.dumps(timing))
    write_json(out / "report.json", {"timing_s": timing, "prompt": PROMPT, "demo_image_psnr_db": str(demo_psnr),
                                     "engines": engines, "parity": report.to_json()})
    (out / "report.txt").write_text(report.table() + "\n")
    print(f"wrote {out / 'onnxruntime.png'}, {out / 'torch.png'}, {out / 'report.json'}, {out / 'report.txt'}, "
          f"the model in {out / 'model'}, the graphs in {out / 'artifacts'}")
    report.raise_on_failure()
    return 0

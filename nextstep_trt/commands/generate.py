"""generate / edit: text-to-image and image editing on the torch, onnxruntime or tensorrt backend."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nextstep_trt.core.errors import UserError

HELP = {"generate": "text to image", "edit": "edit an image with an instruction"}
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def add_generation_arguments(p, edit: bool) -> None:
    """Flags that map onto GenerationOptions (shared by generate, edit, verify, bench)."""
    from nextstep_trt.ref.options import EDIT_DEFAULTS, GenerationOptions

    d = GenerationOptions(**(EDIT_DEFAULTS if edit else {}))
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--steps", type=int, default=d.steps, help="sampler steps per image token")
    p.add_argument("--cfg", type=float, default=d.cfg, help="text guidance scale (>= 1)")
    if edit:
        p.add_argument("--cfg-img", type=float, default=d.cfg_img, help="image guidance scale (>= 1)")
    p.add_argument("--cfg-schedule", default=d.cfg_schedule.value, choices=["constant", "linear"])
    p.add_argument("--shift", type=float, default=d.shift, help="timestep shift")
    p.add_argument("--sampler", default=d.sampler.value, choices=["hf", "gh"],
                   help="hf: N SDE steps (default); gh: N-1 SDE steps + a 0.04 Euler step")
    p.add_argument("--no-use-norm", dest="use_norm", action="store_false", help="skip the per-token LayerNorm")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--positive-prompt", default=d.positive_prompt)
    p.add_argument("--negative-prompt", default=d.negative_prompt)
    p.add_argument("--images-per-prompt", type=int, default=d.images_per_prompt)


def options_from_args(args):
    """GenerationOptions from parsed flags."""
    from nextstep_trt.ref.options import GenerationOptions
    from nextstep_trt.ref.sampling import CfgSchedule, SamplerVariant

    fields = {f.name for f in dataclasses.fields(GenerationOptions)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["cfg_schedule"] = CfgSchedule(values["cfg_schedule"])
    values["sampler"] = SamplerVariant(values["sampler"])
    return GenerationOptions(**values)


def add_arguments(name: str, p) -> None:
    p.add_argument("--model", required=True, help="model folder (official layout)")
    p.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    if name == "edit":
        p.add_argument("--image", required=True, help="input image (resized to --height x --width)")
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--artifacts", help="exported artifacts folder (onnxruntime and tensorrt backends)")
    p.add_argument("--precision", default="fp32", help="graph precision for onnxruntime / tensorrt")
    p.add_argument("--out", required=True, help="output PNG; several images get _0, _1, ... suffixes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_generation_arguments(p, edit=name == "edit")


def output_paths(out: str, n: int) -> list[Path]:
    base = Path(out)
    if base.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {out}")
    return [base] if n == 1 else [base.with_name(f"{base.stem}_{i}{base.suffix}") for i in range(n)]


def save_images(images, out: str, settings: dict) -> list[Path]:
    """Write every PNG atomically, and the resolved settings as JSON next to the first."""
    from nextstep_trt.core.fileio import atomic_path, write_json

    paths = output_paths(out, len(images))
    for img, path in zip(images, paths):
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
    write_json(paths[0].with_suffix(".json"), settings | {"outputs": [str(p) for p in paths]})
    return paths


def _settings(args, opts) -> dict:
    out = {k: v for k, v in vars(args).items() if k not in ("debug",)}
    return out | {"options": json.loads(json.dumps(dataclasses.asdict(opts), default=str))}


def run(args) -> int:
    from nextstep_trt.ref.latents import load_image

    opts = options_from_args(args)
    output_paths(args.out, 1)  # fail on a bad --out before any work
    image = load_image(args.image, opts.height, opts.width) if args.command == "edit" else None
    if args.backend == "torch":
        images = _run_reference(args, opts, image)
    else:
        from nextstep_trt.runtime.api import run_generation

        images = run_generation(args, opts, image)
    for path in save_images(images, args.out, _settings(args, opts)):
        print(f"wrote {path}")
    return 0


def _run_reference(args, opts, image):
    from nextstep_trt.ref.checkpoint import load_model
    from nextstep_trt.ref.pipeline import edit_image, generate_image

    bundle = load_model(args.model)
    fields = dataclasses.asdict(opts)
    if image is None:
        return generate_image(bundle, args.prompt, progress=not args.quiet, **fields)
    return edit_image(bundle, image, args.prompt, progress=not args.quiet, **fields)

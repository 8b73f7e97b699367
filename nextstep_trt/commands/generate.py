"""generate / edit: text-to-image and image editing on the torch, onnxruntime or tensorrt backend."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from nextstep_trt.core.errors import UserError

HELP = {"generate": "text to image", "edit": "edit an image with an instruction"}
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def add_generation_arguments(p, edit: bool) -> None:
    """Flags that map onto GenerationOptions (shared by generate, edit, verify, bench); defaults are the official
    recommendations (editing: its own shift and negative prompt)."""
    from nextstep_trt.ref.options import EDIT_DEFAULTS, MAX_SCALE, MAX_STEPS, GenerationOptions, NoiseMode

    d = GenerationOptions(**(EDIT_DEFAULTS if edit else {}))
    p.add_argument("--height", type=int, default=d.height, help="image height, a multiple of 16 px")
    p.add_argument("--width", type=int, default=d.width, help="image width, a multiple of 16 px")
    p.add_argument("--steps", type=int, default=d.steps, help=f"sampler steps per image token (1..{MAX_STEPS})")
    p.add_argument("--cfg", type=float, default=d.cfg, help=f"text guidance scale (1..{MAX_SCALE:g}; 1 = none)")
    if edit:
        p.add_argument("--cfg-img", type=float, default=d.cfg_img,
                       help=f"image guidance scale (1..{MAX_SCALE:g}; 1 = text guidance only)")
    p.add_argument("--cfg-schedule", default=d.cfg_schedule.value, choices=["constant", "linear"],
                   help="constant, or linear: decays to 1 over the image's tokens")
    p.add_argument("--shift", type=float, default=d.shift, help="timestep shift (> 0)")
    p.add_argument("--sampler", default=d.sampler.value, choices=["hf", "gh"],
                   help="hf: N SDE steps; gh: N-1 SDE steps + a 0.04 Euler step")
    p.add_argument("--no-use-norm", dest="use_norm", action="store_false",
                   help="skip the per-token LayerNorm (default: on)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (0..2^63-1)")
    p.add_argument("--noise", default=d.noise.value, choices=[m.value for m in NoiseMode],
                   help="per-image: a generator per image, the same in any batch; official: torch's CPU generator "
                        "in the official pipeline's order (needs torch)")
    p.add_argument("--positive-prompt", default=d.positive_prompt, help="appended to every prompt")
    p.add_argument("--negative-prompt", default=d.negative_prompt, help="the unconditional branch's text")
    p.add_argument("--images-per-prompt", type=int, default=d.images_per_prompt, help="images per prompt")


def options_from_args(args):
    """GenerationOptions from parsed flags (checked there: one rule for the CLI, the API and the server)."""
    from nextstep_trt.ref.options import GenerationOptions

    fields = {f.name for f in dataclasses.fields(GenerationOptions)}
    return GenerationOptions(**{k: v for k, v in vars(args).items() if k in fields})


def add_arguments(name: str, p) -> None:
    p.add_argument("--model", required=True, help="model folder (official layout)")
    p.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    if name == "edit":
        p.add_argument("--image", required=True, help="input image (resized to --height x --width)")
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="torch: the reference; onnxruntime / tensorrt: the exported graphs")
    p.add_argument("--artifacts", help="exported artifacts folder (onnxruntime and tensorrt backends)")
    p.add_argument("--precision", default="fp32",
                   help="graph precision for onnxruntime / tensorrt (the torch reference runs fp32 only)")
    p.add_argument("--out", required=True, help="output PNG; several images get _0, _1, ... suffixes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_generation_arguments(p, edit=name == "edit")


def output_paths(out: str, n: int) -> list[Path]:
    """The PNG paths of n images; a bad --out (not .png, a folder, no writable parent) is refused up front."""
    from nextstep_trt.core.fileio import check_output_file

    base = Path(out)
    if base.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {out}")
    paths = [base] if n == 1 else [base.with_name(f"{base.stem}_{i}{base.suffix}") for i in range(n)]
    for path in paths:
        check_output_file(path, "--out")
    return paths


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
    return out | {"options": opts.to_dict()}


def check_early(args, opts) -> None:
    """Everything that can be refused before torch or a model loads: options, prompts, --out, the token grid."""
    from nextstep_trt.core.choices import check_text
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.ref.config import load_config
    from nextstep_trt.ref.latents import token_grid

    if args.backend == "torch" and Precision.parse(args.precision) is not Precision.FP32:
        raise UserError(f"--precision {args.precision}: the torch backend is the fp32 reference; graph precisions "
                        "run on --backend onnxruntime or tensorrt (with --artifacts)")
    for prompt in args.prompt:
        check_text("--prompt", prompt)
    opts.guidance(edit=args.command == "edit")
    output_paths(args.out, len(args.prompt) * opts.images_per_prompt)
    token_grid(opts.height, opts.width, load_config(args.model).pixels_per_token)


def run(args) -> int:
    from nextstep_trt.ref.latents import load_image

    opts = options_from_args(args)
    check_early(args, opts)
    image = load_image(args.image, opts.height, opts.width) if args.command == "edit" else None
    print(f"{args.command}: {opts.height}x{opts.width}, {opts.steps} steps, cfg {opts.cfg:g}"
          + (f", cfg-img {opts.cfg_img:g}" if image is not None else "")
          + f", {opts.guidance(image is not None).value} guidance, seed {opts.seed}, {opts.noise.value} noise, "
            f"backend {args.backend}")
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
    fields = opts.to_dict()
    if image is None:
        return generate_image(bundle, args.prompt, progress=not args.quiet, **fields)
    return edit_image(bundle, image, args.prompt, progress=not args.quiet, **fields)

"""Open a backend by name and check a request against what it was exported for (torch-free unless backend=torch)."""
from __future__ import annotations

from pathlib import Path

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision
from nextstep_trt.ref.config import NextStepConfig, load_config
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.tokenizer import load_tokenizer

from .backend import Backend

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def open_backend(name: str, model_dir: str | Path | None = None, artifacts: str | Path | None = None,
                 precision: str = "fp32", device: str = "cpu", threads: int = 0, bundle=None) -> Backend:
    """A backend; artifacts are checked against the model folder's config when both are given."""
    precision = Precision.parse(precision)
    if name == "torch":
        if bundle is None:
            if model_dir is None:
                raise UserError("the torch backend needs --model")
            from nextstep_trt.ref.checkpoint import load_model

            bundle = load_model(model_dir, with_tokenizer=False)
        from .torch_backend import TorchBackend

        return TorchBackend(bundle)
    if artifacts is None:
        raise UserError(f"the {name} backend needs --artifacts (run `nextstep-trt export` first)")
    if name == "onnxruntime" and precision is Precision.BF16 and device == "cpu":
        from .onnx_reference_backend import ReferenceBackend  # ORT's CPU provider has no bf16 kernels

        backend = ReferenceBackend(artifacts, precision, threads)
    elif name == "onnxruntime":
        from .ort_backend import OrtBackend

        backend = OrtBackend(artifacts, precision, device, threads)
    elif name == "tensorrt":
        from .trt_backend import TrtBackend

        backend = TrtBackend(artifacts, precision)
    else:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if model_dir is not None:
        note = backend.manifest.check_model(load_config(model_dir), model_dir)   # same checkpoint, or refused
        if note:
            backend._notice(note)
    return backend


def check_request(backend: Backend, opts: GenerationOptions, n_images: int, edit: bool) -> None:
    """Refuse what the exported graphs cannot run: resolution, batch, missing editing graphs."""
    profile = getattr(backend, "profile", None)
    if profile is None:
        return
    for axis, name, size in ((0, "height", opts.height), (1, "width", opts.width)):
        lo, hi = profile.side_range(axis)
        if not lo <= size <= hi:
            raise UserError(f"{name} {size} is outside the exported profile ({lo}..{hi}); re-export with "
                            f"--resolutions to include it")
    if n_images > profile.max_batch:
        raise UserError(f"{n_images} images in one call exceed the exported max batch {profile.max_batch}")
    needed = ("vae_encoder",) if edit else ()
    for graph in needed + ("backbone", "vae_decoder"):
        backend.spec(graph)


def model_tokenizer(model_dir: str | Path, config: NextStepConfig):
    return load_tokenizer(model_dir, config.tokens)


def run_generation(args, opts: GenerationOptions, image) -> list:
    """The CLI's generate/edit on the onnxruntime or tensorrt backend: PIL images."""
    from PIL import Image

    from .loop import Request, run_request

    if args.model is None:
        raise UserError("--model is needed for the tokenizer")
    req = Request(list(args.prompt), opts, image)
    with open_backend(args.backend, args.model, args.artifacts, args.precision) as backend:
        check_request(backend, opts, len(req.prompts) * opts.images_per_prompt, image is not None)
        tokenizer = model_tokenizer(args.model, backend.config)
        max_tokens = backend.spec("backbone").attrs.get("max_prompt_tokens")
        pixels = run_request(backend, tokenizer, req, progress=not args.quiet, max_tokens=max_tokens)
        for notice in backend.notices:
            print(f"note: {notice}")
    return [Image.fromarray(p) for p in pixels]

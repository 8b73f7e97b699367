"""serve / client / triton-repo: NextStep-1 behind Triton Inference Server (KServe v2 over HTTP and gRPC)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from nextstep_trt.core.errors import UserError

HELP = {"serve": "serve nextstep_t2i (and nextstep_edit) with Triton (PyTriton's server) on 127.0.0.1",
        "client": "ask a running server for one image (tritonclient, http:// or grpc://) and write a PNG",
        "triton-repo": "write a Triton model repository (one Python-backend model per task) for tritonserver"}
BACKENDS = ("onnxruntime", "tensorrt")


def _repo_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model folder (config and tokenizer are taken from it)")
    p.add_argument("--artifacts", required=True, help="exported artifacts folder")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS, help="backend the served loop runs on")
    p.add_argument("--precision", default="fp32", help="graph precision")
    p.add_argument("--max-batch", type=int, help="images per batch (default and upper bound: the exported max)")
    p.add_argument("--max-queue-delay-ms", type=float, default=50.0, help="dynamic batcher: wait this long to fill")
    p.add_argument("--instances", type=int, default=1, help="model instances (each runs its own loop)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per instance (0: default)")
    p.add_argument("--no-edit", dest="edit", action="store_false", help="do not serve nextstep_edit")


def add_arguments(name: str, p) -> None:
    if name == "client":
        p.add_argument("--url", default="http://127.0.0.1:8000", help="http://HOST:PORT or grpc://HOST:PORT")
        p.add_argument("--prompt", required=True, help="the prompt (or the edit instruction with --image)")
        p.add_argument("--negative-prompt", help="the unconditional branch's text (default: the server's)")
        p.add_argument("--image", help="input image: edit it with nextstep_edit (resized to --height x --width)")
        for flag, kind in (("--height", int), ("--width", int), ("--steps", int), ("--seed", int),
                           ("--cfg", float), ("--cfg-img", float)):
            p.add_argument(flag, type=kind, help="default: the server's")
        p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
        p.add_argument("--wait", type=float, default=0.0,
                       help="seconds to wait for a server that is still starting (0: ask once)")
        p.add_argument("--out", required=True, help="output PNG (written atomically)")
        return
    _repo_arguments(p)
    if name == "triton-repo":
        p.add_argument("--out", required=True, help="repository folder to write (replaced atomically)")
        p.add_argument("--link", default="hardlink", choices=["hardlink", "copy", "symlink"],
                       help="how the artifacts get into the repository (hardlink falls back to copy)")
        return
    p.add_argument("--host", default="127.0.0.1", help="address every endpoint binds (default: loopback only)")
    p.add_argument("--http-port", type=int, default=8000, help="KServe v2 HTTP port")
    p.add_argument("--grpc-port", type=int, default=8001, help="KServe v2 gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton log level (1 logs every batch)")
    p.add_argument("--log-file", default="nextstep-serve.log",
                   help="where Triton's own output goes (appended); serve prints only its ready lines")
    p.add_argument("--verbose", action="store_true", help="print Triton's output here instead of the log file")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the models to load")
    p.add_argument("--exit-timeout", type=int, default=20,
                   help="seconds Triton waits at shutdown for in-flight requests and open client connections")


def _repo_options(args, out: Path, link: str):
    from nextstep_trt.serve.repo import RepoOptions

    return RepoOptions(Path(args.artifacts), Path(args.model), out, args.backend, args.precision, args.max_batch,
                       args.max_queue_delay_ms, args.instances, args.threads, link, edit=args.edit)


def _check_backend(name: str) -> None:
    import importlib.util

    if name == "tensorrt" and importlib.util.find_spec("nextstep_trt.runtime.trt_backend") is None:
        raise UserError("the tensorrt backend is not part of this installation; use --backend onnxruntime")


def _triton_repo(args) -> int:
    from nextstep_trt.serve.repo import write_repo

    _check_backend(args.backend)
    models = write_repo(_repo_options(args, Path(args.out), args.link))
    for name, limits in models.items():
        print(f"wrote {Path(args.out) / name} (max batch {limits.max_batch}, {limits.sampler.steps} steps)")
    print(f"start it with: tritonserver --model-repository {args.out}  (nextstep-trt must be installed in the "
          "Python environment of the Python backend stub)")
    return 0


def _serve(args) -> int:
    import tempfile

    from nextstep_trt.serve.repo import check_options, write_models
    from nextstep_trt.serve.server import ServerOptions, TritonProcess, prepare_backends

    _check_backend(args.backend)
    server_opts = ServerOptions(args.host, args.http_port, args.grpc_port, args.metrics_port,
                                gpu_metrics=args.backend == "tensorrt", log_verbose=args.log_verbose,
                                exit_timeout_s=args.exit_timeout,
                                log_file=None if args.verbose else Path(args.log_file).resolve())
    with tempfile.TemporaryDirectory(prefix="nextstep-serve-") as work:
        repo_opts = _repo_options(args, Path(work) / "repo", "symlink")
        manifest = check_options(repo_opts)
        repo_opts.out.mkdir()
        models = write_models(repo_opts.out, repo_opts, manifest)
        proc = TritonProcess(repo_opts.out, prepare_backends(Path(work)), server_opts)
        stopping: list[int] = []

        def forward(signum, _frame) -> None:
            stopping.append(signum)
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)

        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            proc.start()
            where = "its output follows" if args.verbose else f"its log: {server_opts.log_file}"
            print(f"nextstep-trt serve: starting Triton ({where})", flush=True)
            try:
                proc.wait_ready(args.ready_timeout)
                _print_ready(server_opts, models)
            except UserError:
                if not stopping:  # a signal during start-up is a normal stop
                    raise
            code = proc.proc.wait()
        finally:
            proc.stop()
            for s, handler in old.items():
                signal.signal(s, handler)
    if code != 0 and not stopping:
        raise UserError(f"tritonserver exited with code {code}")
    print("nextstep-trt serve: stopped", flush=True)
    return 0


def _print_ready(opts, models: dict) -> None:
    host = opts.probe_host if opts.host in ("0.0.0.0", "::", "") else opts.host
    if opts.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"nextstep-trt serve: warning: listening on {opts.host}, not loopback only: Triton has no body-size "
              "limit or authentication; put a proxy that enforces both in front", flush=True)
    print(f"nextstep-trt serve: ready on {opts.host}: http {opts.http_port}, grpc {opts.grpc_port}, "
          f"metrics http://{host}:{opts.metrics_port}/metrics", flush=True)
    for name, limits in models.items():
        caps = limits.to_dict()
        print(f"  {name}: max batch {caps['max_batch']}, steps {caps['steps']}"
              f"{' (or fewer)' if caps['fewer_steps'] else ''}, resolutions "
              f"{', '.join(f'{h}x{w}' for h, w in limits.resolutions)}, prompt <= {caps['max_prompt_tokens']} "
              f"tokens / {caps['max_prompt_bytes']} bytes, largest valid request {caps['max_request_bytes']} bytes",
              flush=True)


def _client(args) -> int:
    import numpy as np
    from PIL import Image

    from nextstep_trt.core.fileio import atomic_path
    from nextstep_trt.ref.latents import load_image
    from nextstep_trt.serve.client import Client, ImageRequest

    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {args.out}")
    image = None
    if args.image is not None:
        try:
            with Image.open(args.image) as img:
                size = img.size
        except OSError as err:
            raise UserError(f"cannot read image {args.image}: {err}") from None
        image = load_image(args.image, args.height or size[1], args.width or size[0])
    req = ImageRequest(args.prompt, args.height, args.width, args.steps, args.seed, args.cfg, args.negative_prompt,
                       image, args.cfg_img)
    client = Client(args.url, args.timeout)
    try:
        if args.wait > 0:
            client.wait_ready(req.model, args.wait)
        pixels = client.infer(req)
    finally:
        client.close()
    with atomic_path(args.out) as tmp:
        Image.fromarray(np.asarray(pixels, np.uint8)).save(tmp, format="PNG")
    why = "" if args.height or args.width or image is not None else \
        ": the server's default size, its first exported resolution (ask with --height/--width)"
    print(f"wrote {args.out} ({pixels.shape[0]}x{pixels.shape[1]}, {req.model}{why})")
    return 0


def run(args) -> int:
    if args.command == "client":
        return _client(args)
    if args.command == "triton-repo":
        return _triton_repo(args)
    sys.stdout.reconfigure(line_buffering=True)
    return _serve(args)

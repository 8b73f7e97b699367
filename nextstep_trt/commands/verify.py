"""verify / record: three-level parity of a backend against the reference, live or from a golden folder."""
from __future__ import annotations

from pathlib import Path

from nextstep_trt.core.errors import UserError

HELP = {"verify": "check a backend's graphs and loop against the reference (levels 1-3)",
        "record": "save the reference's graph and loop inputs/outputs to a golden folder"}


def add_arguments(name: str, p) -> None:
    if name == "record":
        p.add_argument("--model", required=True, help="model folder")
        p.add_argument("--out", required=True, help="golden folder to write")
        p.add_argument("--artifacts", help="take the profile and graph list from this artifacts folder")
        from nextstep_trt.commands.export import add_profile_arguments

        add_profile_arguments(p)
        return
    p.add_argument("--artifacts", required=True, help="artifacts folder (manifest.json)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model folder: compute the reference live with PyTorch")
    src.add_argument("--golden", help="golden folder from `nextstep-trt record` (no PyTorch needed)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                   help="backend whose graphs are checked")
    p.add_argument("--precision", default="fp32",
                   help="fp32, fp16, bf16 or fp8 (bf16 on the CPU runs in the ONNX reference evaluator)")
    p.add_argument("--levels", help="comma-separated subset of 1,2,3 (default: all; none with --integrity)")
    p.add_argument("--report", help="write the full report as JSON")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime execution provider")
    p.add_argument("--integrity", action="store_true",
                   help="hash every graph and external-data file (and with --model the model folder's files) in full "
                        "against the manifest, whatever the load-time stamps say; add --levels to run parity after")
    p.add_argument("--mark-intermediates", action="store_true",
                   help="also compare every intermediate tensor of each precision graph with its fp32 graph on the "
                        "first level-1 case and name the worst layer")


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        levels = ()
    if not levels or not set(levels) <= {1, 2, 3}:
        raise UserError(f"--levels takes a subset of 1,2,3, got {text!r}")
    return levels


def _run_integrity(args) -> None:
    """Every recorded file hashed in full (stamps refreshed); a CheckFailed naming the first that differs."""
    from nextstep_trt.core.errors import CheckFailed
    from nextstep_trt.export.manifest import Manifest
    from nextstep_trt.ref.config import load_config

    manifest = Manifest.load(args.artifacts, force_hash=True)
    checks = manifest.check_all_files()
    for c in checks:
        print(f"  {'ok' if c.ok else 'NO'}  {c.path}: {c.detail}")
    problems = [f"{c.path}: {c.detail}" for c in checks if not c.ok]
    if args.model:
        try:
            note = manifest.check_model(load_config(args.model), args.model)
            print(f"  ok  model folder {args.model}: same files as at export" + (f" ({note})" if note else ""))
        except UserError as err:
            print(f"  NO  model folder {args.model}: {err}")
            problems.append(str(err))
    hashed = manifest.hashes
    print(f"integrity: {len(checks)} artifact files, {len(hashed.hashed)} files ({hashed.hashed_bytes / 1e9:.2f} GB) "
          f"hashed in full, {len(problems)} problem(s)")
    if problems:
        raise CheckFailed(f"integrity: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                                          else ""))


def _run_verify(args) -> int:
    if args.report:
        from nextstep_trt.core.fileio import check_output_file

        check_output_file(args.report, "--report")      # refused now, not after the checks
    if args.integrity:
        _run_integrity(args)
        if args.levels is None:
            return 0
    if not (args.model or args.golden):
        raise UserError("verify needs --model or --golden (the reference), or --integrity alone")
    from nextstep_trt.core.fileio import write_json
    from nextstep_trt.runtime.api import open_backend
    from nextstep_trt.runtime.verify import verify_backend

    levels = _levels(args.levels or "1,2,3")
    if args.mark_intermediates and args.precision == "fp32":
        raise UserError("--mark-intermediates compares a precision graph with its fp32 graph: use --precision "
                        "fp16, bf16, fp8, int8 or int4")
    with open_backend(args.backend, args.model, args.artifacts, args.precision, args.device) as backend:
        if args.golden:
            from nextstep_trt.runtime.golden import GoldenReference

            reference = GoldenReference(args.golden)
            reference.check_model(backend.manifest.fingerprint)
        else:
            from nextstep_trt.ref.checkpoint import load_model
            from nextstep_trt.runtime.reference import LiveReference

            reference = LiveReference(load_model(args.model), backend.manifest.profile)
        report = verify_backend(backend, reference, args.precision, levels)
        layers = []
        if args.mark_intermediates:
            from nextstep_trt.engines.precision.intermediates import worst_layers

            layers = worst_layers(backend.manifest, reference, args.precision)
    print("worst case per graph and level (every row: --report FILE.json):")
    print(report.worst_per_graph().table())
    for layer_report in layers:
        print(layer_report.table())
    print(f"{len(report.rows)} checks, {len(report.failures())} failed")
    if args.report:
        write_json(args.report, report.to_json() | {"intermediates": [r.to_json() for r in layers]})
    report.raise_on_failure()
    return 0


def _run_record(args) -> int:
    from nextstep_trt.commands.export import profile_from_args
    from nextstep_trt.export.manifest import Manifest
    from nextstep_trt.export.profile import graph_specs
    from nextstep_trt.ref.checkpoint import load_model
    from nextstep_trt.runtime.golden import check_golden_out, record
    from nextstep_trt.runtime.reference import LiveReference

    check_golden_out(args.out)                                # before the model loads
    bundle = load_model(args.model)
    if args.artifacts:
        manifest = Manifest.load(args.artifacts)
        manifest.check_model(bundle.config, args.model)
        profile, names = manifest.profile, manifest.graphs
    else:
        profile, names = profile_from_args(args), None
    specs = graph_specs(bundle.config, profile, *([names] if names else []))
    meta = {"fingerprint": bundle.config.fingerprint(), "profile": profile.to_dict()}
    record(LiveReference(bundle, profile), specs, Path(args.out), meta)
    print(f"wrote golden folder {args.out}")
    return 0


def run(args) -> int:
    return _run_record(args) if args.command == "record" else _run_verify(args)

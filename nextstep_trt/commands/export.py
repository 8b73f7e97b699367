"""export: write every graph as ONNX plus manifest.json, validated against the reference."""
from __future__ import annotations

from pathlib import Path

from nextstep_trt.core.errors import UserError

HELP = {"export": "export the model's graphs to ONNX (fp32), validate them, write manifest.json"}


def add_profile_arguments(p) -> None:
    """Flags that size a DeploymentProfile."""
    from nextstep_trt.export.profile import DeploymentProfile

    d = DeploymentProfile()
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images per call")
    p.add_argument("--opt-batch", type=int, default=d.opt_batch, help="batch the TensorRT profiles optimise for")
    p.add_argument("--max-text-tokens", type=int, default=d.max_text_tokens,
                   help="longest caption / negative prompt, in tokens")
    p.add_argument("--resolutions", default=",".join(f"{h}x{w}" for h, w in d.resolutions),
                   help="comma-separated HEIGHTxWIDTH list the VAE graphs and KV capacity are sized for")
    p.add_argument("--steps", type=int, default=d.t2i_sampler.steps, help="sampler steps fixed in the fused graphs")
    p.add_argument("--shift", type=float, default=d.t2i_sampler.shift, help="timestep shift of head_sampler")
    p.add_argument("--edit-shift", type=float, default=d.edit_sampler.shift, help="timestep shift of head_sampler_edit")
    p.add_argument("--sampler", default="hf", choices=["hf", "gh"], help="sampler variant the fused samplers fix")
    p.add_argument("--no-use-norm", dest="use_norm", action="store_false",
                   help="fused samplers without the per-token LayerNorm (default: with)")
    p.add_argument("--no-edit", dest="edit", action="store_false", help="skip the editing graphs")


def parse_resolutions(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise UserError(f"bad resolution {item!r}: use HEIGHTxWIDTH, e.g. 512x512") from None
        out.append((h, w))
    return tuple(out)


def profile_from_args(args):
    from nextstep_trt.export.profile import DeploymentProfile
    from nextstep_trt.ref.sampling import SamplerConfig, SamplerVariant

    variant = SamplerVariant(args.sampler)
    return DeploymentProfile(
        max_batch=args.max_batch, opt_batch=args.opt_batch, max_text_tokens=args.max_text_tokens,
        resolutions=parse_resolutions(args.resolutions), edit=args.edit,
        t2i_sampler=SamplerConfig(args.steps, args.shift, variant, args.use_norm),
        edit_sampler=SamplerConfig(args.steps, args.edit_shift, variant, args.use_norm))


def add_arguments(name: str, p) -> None:
    from .flags import comma_list

    p.add_argument("--model", required=True, help="model folder (official layout)")
    p.add_argument("--out", required=True, help="artifacts folder")
    p.add_argument("--graphs", type=comma_list, metavar="A,B", help="comma-separated subset of the graphs (default: all)")
    p.add_argument("--external-data", action="store_true", help="always write weights as external data")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the ORT-vs-torch check")
    p.add_argument("--report", help="write the validation report as JSON")
    p.add_argument("--low-memory", action="store_true",
                   help="trace on the meta device and stream weights into external data (models of any size)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weight dtype of the graphs "
                   "(bf16 needs --low-memory; graphs of the checkpoint's dtype point at its shards through hard links)")
    p.add_argument("--check-only", action="store_true",
                   help="export nothing: check the exported graphs' integrity against the model folder")
    p.add_argument("--layer", type=int, help="backbone layer of the numeric spot check (default: the middle one)")
    add_profile_arguments(p)


def run(args) -> int:
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.export.profile import GRAPHS
    from nextstep_trt.export.run import ExportOptions, export_all

    graphs = args.graphs or GRAPHS
    opts = ExportOptions(Path(args.model), Path(args.out), graphs, profile_from_args(args), args.validate,
                         True if args.external_data or args.low_memory else None, low_memory=args.low_memory,
                         dtype=Precision.parse(args.dtype))
    if args.check_only or args.low_memory:
        return _low_memory(args, opts)
    return _show(args, export_all(opts), "worst case per graph (all cases: --report FILE.json):")


def _show(args, report, title: str | None = None) -> int:
    """Print the worst validation case per graph and write ``--report``."""
    from nextstep_trt.core.fileio import write_json

    if report.rows:
        if title:
            print(title)
        print(report.worst_per_graph().table())
    if args.report:
        write_json(args.report, report.to_json())
    return 0


def _low_memory(args, opts) -> int:
    """--low-memory export, or --check-only integrity checks of exported graphs (export/lowmem.py)."""
    from nextstep_trt.core.errors import CheckFailed
    from nextstep_trt.core.fileio import write_json
    from nextstep_trt.export.lowmem import check_artifacts, export_low_memory

    if args.check_only:
        reports = check_artifacts(opts, args.layer)
        print("\n".join(r.table() for r in reports))
        if args.report:
            write_json(args.report, {"ok": all(r.ok for r in reports), "graphs": [r.to_dict() for r in reports]})
        bad = [r for r in reports if not r.ok]
        if bad:
            raise CheckFailed(f"{bad[0].graph} failed its integrity check: {bad[0].first_failure()}")
        return 0
    return _show(args, export_low_memory(opts, layer=args.layer))

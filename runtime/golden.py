"""Golden folders: the reference's inputs and outputs of every graph and of the loop, as npz + JSON (torch-free).

``record`` writes one from a live reference; ``GoldenReference`` replays it without torch. Each graph's inputs are
also saved in Polygraphy's JSON format, so ``polygraphy run GRAPH.onnx --onnxrt --load-inputs inputs.json`` works.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir
from nextstep_trt.export.manifest import versions
from nextstep_trt.export.spec import GraphSpec
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.prompt import PromptBatch
from nextstep_trt.ref.sampling import CfgSchedule, SamplerVariant

from .parity import LoopCase, LoopTrace

FORMAT = 1
PROMPT_FIELDS = ("input_ids", "token_mask", "image_mask", "position_ids")


def _opts_to_dict(opts: GenerationOptions) -> dict:
    d = dataclasses.asdict(opts)
    return d | {"cfg_schedule": opts.cfg_schedule.value, "sampler": opts.sampler.value}


def _opts_from_dict(d: dict) -> GenerationOptions:
    return GenerationOptions(**{**d, "cfg_schedule": CfgSchedule(d["cfg_schedule"]),
                                "sampler": SamplerVariant(d["sampler"])})


def _save_level1(root: Path, spec: GraphSpec, cases: list) -> list[str]:
    from polygraphy.json import save_json

    folder = root / "level1" / spec.name
    folder.mkdir(parents=True)
    for i, (_, feeds, ref) in enumerate(cases):
        np.savez(folder / f"case_{i}.npz", **{f"in/{k}": v for k, v in feeds.items()},
                 **{f"out/{k}": v for k, v in ref.items()})
    save_json([feeds for _, feeds, _ in cases], str(folder / "inputs.json"), description="graph inputs")
    return [label for label, _, _ in cases]


def _save_case(root: Path, i: int, case: LoopCase, ref2: LoopTrace, ref3: LoopTrace) -> dict:
    arrays = {f"prompt/{f}": getattr(case.prompt, f) for f in PROMPT_FIELDS} | {"noise": case.noise}
    arrays |= {"ref2/cond": np.stack(ref2.cond), "ref2/tokens": ref2.tokens,
               "ref3/tokens": ref3.tokens, "ref3/image": ref3.image}
    if ref2.velocity:
        arrays["ref2/velocity"] = np.stack(ref2.velocity)
    if case.image_tokens is not None:
        arrays |= {"image_tokens": case.image_tokens, "source_image": case.source_image}
    np.savez(root / "loop" / f"case_{i}.npz", **arrays)
    return {"label": case.label, "opts": _opts_to_dict(case.opts), "cfg_rows": case.prompt.cfg_rows}


def record(reference, specs: dict[str, GraphSpec], out_dir: str | Path, meta: dict, log=print) -> Path:
    """Write a golden folder from a live reference (level-1 cases of every graph in ``specs``, every loop case)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "loop").mkdir()
        graphs = {}
        for name, spec in specs.items():
            graphs[name] = {"spec": spec.to_dict(), "cases": _save_level1(tmp, spec, reference.level1(spec))}
            log(f"recorded {name}")
        cases = []
        for i, case in enumerate(reference.cases()):
            cases.append(_save_case(tmp, i, case, reference.level2(case), reference.level3(case)))
            log(f"recorded loop case {case.label}")
        doc = {"format": FORMAT, **meta, "versions": versions(), "graphs": graphs, "loop_cases": cases}
        (tmp / "golden.json").write_text(json.dumps(doc, indent=2) + "\n")
    return out_dir


class GoldenReference:
    """A recorded reference: the same interface as ``nextstep_trt.runtime.reference.LiveReference``, no torch needed."""

    def __init__(self, folder: str | Path):
        self.root = Path(folder)
        meta = self.root / "golden.json"
        if not meta.is_file():
            raise UserError(f"{folder} is not a golden folder (no golden.json; make one with `nextstep-trt record`)")
        self.meta = json.loads(meta.read_text())
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{meta}: golden format {self.meta.get('format')}, this nextstep-trt reads {FORMAT}")
        self._loaded: dict[int, tuple[LoopCase, dict]] = {}

    def check_model(self, fingerprint: str) -> None:
        if self.meta.get("fingerprint") != fingerprint:
            raise UserError(f"golden {self.root} was recorded for model {self.meta.get('fingerprint')}, "
                            f"the artifacts are for {fingerprint}")

    def level1(self, spec: GraphSpec) -> list[tuple[str, dict, dict]]:
        entry = self.meta["graphs"].get(spec.name)
        if entry is None:
            return []
        out = []
        for i, label in enumerate(entry["cases"]):
            with np.load(self.root / "level1" / spec.name / f"case_{i}.npz") as z:
                feeds = {k[3:]: z[k] for k in z.files if k.startswith("in/")}
                ref = {k[4:]: z[k] for k in z.files if k.startswith("out/")}
            out.append((label, feeds, ref))
        return out

    def _case(self, i: int) -> tuple[LoopCase, dict]:
        if i not in self._loaded:
            meta = self.meta["loop_cases"][i]
            with np.load(self.root / "loop" / f"case_{i}.npz") as z:
                arrays = {k: z[k] for k in z.files}
            prompt = PromptBatch(*(arrays[f"prompt/{f}"] for f in PROMPT_FIELDS), meta["cfg_rows"])
            case = LoopCase(meta["label"], _opts_from_dict(meta["opts"]), prompt, arrays["noise"],
                            arrays.get("image_tokens"), arrays.get("source_image"), i)
            self._loaded[i] = (case, arrays)
        return self._loaded[i]

    def cases(self) -> list[LoopCase]:
        return [self._case(i)[0] for i in range(len(self.meta["loop_cases"]))]

    def level2(self, case: LoopCase) -> LoopTrace:
        a = self._case(case.index)[1]
        velocity = list(a["ref2/velocity"]) if "ref2/velocity" in a else []
        return LoopTrace(list(a["ref2/cond"]), velocity, a["ref2/tokens"])

    def level3(self, case: LoopCase) -> LoopTrace:
        a = self._case(case.index)[1]
        return LoopTrace(tokens=a["ref3/tokens"], image=a["ref3/image"])

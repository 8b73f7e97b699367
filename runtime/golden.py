"""Golden folders: the reference's inputs and outputs of every graph and of the loop, as npz + JSON (torch-free).

``record`` writes one from a live reference; ``GoldenReference`` replays it without torch. Each graph's inputs are
also saved in Polygraphy's JSON format, so ``polygraphy run GRAPH.onnx --onnxrt --load-inputs inputs.json`` works.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir, describe_os_error
from nextstep_trt.core.jsonfile import field, read_json
from nextstep_trt.core.paths import inside
from nextstep_trt.export.manifest import versions
from nextstep_trt.export.profile import GRAPHS
from nextstep_trt.export.spec import GraphSpec
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.prompt import PromptBatch
from nextstep_trt.ref.sampling import Guidance

from .parity import LoopCase, LoopTrace

FORMAT = 1
PROMPT_FIELDS = ("input_ids", "token_mask", "image_mask", "position_ids")


def _opts_to_dict(opts: GenerationOptions) -> dict:
    return opts.to_dict()


def _opts_from_dict(d: dict) -> GenerationOptions:
    return GenerationOptions(**d)                     # enum fields take their string values


def _guidance(meta: dict) -> Guidance:
    """The case's CFG layout (golden folders recorded before layouts existed hold cfg_rows 2 or 3)."""
    if "guidance" in meta:
        return Guidance(meta["guidance"])
    return Guidance.TEXT_IMAGE if meta["cfg_rows"] == 3 else Guidance.TEXT


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
    return {"label": case.label, "opts": _opts_to_dict(case.opts), "guidance": case.prompt.guidance.value}


def record(reference, specs: dict[str, GraphSpec], out_dir: str | Path, meta: dict, log=print) -> Path:
    """Write a golden folder from a live reference (level-1 cases of every graph in ``specs``, every loop case)."""
    out_dir = Path(out_dir)
    check_golden_out(out_dir)
    try:
        return _record(reference, specs, out_dir, meta, log)
    except OSError as err:                 # disk full, read-only: nothing replaced (atomic_dir)
        raise UserError(f"cannot write the golden folder {out_dir}: {describe_os_error(err)}") from None


def check_golden_out(out_dir: str | Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder with other content (a golden folder replaces it whole)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; name a folder for the golden files")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "golden.json").is_file():
        raise UserError(f"{out_dir} exists and is not a golden folder (it would be replaced): choose another --out")


def _record(reference, specs: dict[str, GraphSpec], out_dir: Path, meta: dict, log) -> Path:
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
        self.meta_path = meta = self.root / "golden.json"
        if not meta.is_file():
            raise UserError(f"{folder} is not a golden folder (no golden.json; make one with `nextstep-trt record`)")
        self.meta = read_json(meta, "golden file")
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{meta}: golden format {self.meta.get('format')}, this nextstep-trt reads {FORMAT}")
        _check_meta(meta, self.meta)
        self._loaded: dict[int, tuple[LoopCase, dict]] = {}

    def _arrays(self, rel: str) -> dict[str, np.ndarray]:
        """Every array of one npz file of the folder (inside it, no pickles); a UserError naming a damaged file."""
        path = inside(self.root, rel, f"{self.meta_path}: case file")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise UserError(f"{path} is missing from the golden folder (record it again)") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{path} is not a readable npz file ({type(err).__name__}: {err})"[:300]) from None

    def check_model(self, fingerprint: str) -> None:
        if self.meta.get("fingerprint") != fingerprint:
            raise UserError(f"golden {self.root} was recorded for model {self.meta.get('fingerprint')}, "
                            f"the artifacts are for {fingerprint}")

    def level1(self, spec: GraphSpec, redraw: bool = True) -> list[tuple[str, dict, dict]]:
        """The recorded cases of one graph (``redraw=False``: without the extra draws, labels "... #k")."""
        entry = self.meta["graphs"].get(spec.name)
        if entry is None:
            return []
        out = []
        for i, label in enumerate(entry["cases"]):
            if not redraw and " #" in label:
                continue
            z = self._arrays(f"level1/{spec.name}/case_{i}.npz")
            feeds = {k[3:]: v for k, v in z.items() if k.startswith("in/")}
            ref = {k[4:]: v for k, v in z.items() if k.startswith("out/")}
            out.append((label, feeds, ref))
        return out

    def _case(self, i: int) -> tuple[LoopCase, dict]:
        if i not in self._loaded:
            meta = self.meta["loop_cases"][i]
            arrays = self._arrays(f"loop/case_{i}.npz")
            try:
                self._loaded[i] = (self._loop_case(i, meta, arrays), arrays)
            except (KeyError, TypeError, ValueError) as err:
                raise UserError(f"{self.meta_path}: loop case {i} cannot be read ({type(err).__name__}: {err})"[:300]) \
                    from None
        return self._loaded[i]

    @staticmethod
    def _loop_case(i: int, meta: dict, arrays: dict) -> LoopCase:
        """Loop case ``i`` from its golden.json entry and its arrays."""
        prompt = PromptBatch(*(arrays[f"prompt/{f}"] for f in PROMPT_FIELDS), _guidance(meta))
        return LoopCase(meta["label"], _opts_from_dict(meta["opts"]), prompt, arrays["noise"],
                        arrays.get("image_tokens"), arrays.get("source_image"), i)

    def cases(self) -> list[LoopCase]:
        return [self._case(i)[0] for i in range(len(self.meta["loop_cases"]))]

    def _need(self, case: LoopCase, *keys: str) -> dict:
        a = self._case(case.index)[1]
        missing = [k for k in keys if k not in a]
        if missing:
            raise UserError(f"{self.root / 'loop' / f'case_{case.index}.npz'} has no {missing[0]} array")
        return a

    def level2(self, case: LoopCase) -> LoopTrace:
        a = self._need(case, "ref2/cond", "ref2/tokens")
        velocity = list(a["ref2/velocity"]) if "ref2/velocity" in a else []
        return LoopTrace(list(a["ref2/cond"]), velocity, a["ref2/tokens"])

    def level3(self, case: LoopCase) -> LoopTrace:
        a = self._need(case, "ref3/tokens", "ref3/image")
        return LoopTrace(tokens=a["ref3/tokens"], image=a["ref3/image"])


def _check_meta(path: Path, meta: dict) -> None:
    """golden.json's graphs (known names, so their folders stay inside) and loop cases, of the types read."""
    for name, entry in field(meta, "graphs", dict, str(path)).items():
        if name not in GRAPHS:
            raise UserError(f"{path}: unknown graph {name!r} (known: {', '.join(GRAPHS)})")
        field(entry, "cases", list, f"{path}: graphs.{name}")
    cases = field(meta, "loop_cases", list, str(path))
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("opts"), dict):
            raise UserError(f"{path}: loop_cases[{i}] must be an object with 'label' and 'opts'")

"""``ART/manifest.json``: what was exported, from which model, for which profile, and how it validated (torch-free).

The manifest also records the sha256 of every file each graph reads (``hashes``: the graph and its external data)
and the identity of the model folder it was exported from (``model.source``: sizes and sha256 of its configs,
tokenizer and weights). ``path`` refuses a graph whose bytes are not those recorded (``filecheck.py``), and
``check_model`` a model folder that is not the one recorded, naming both.
"""
from __future__ import annotations

import json
from pathlib import Path

from nextstep_trt.core.digests import HashCache, sha256_file  # noqa: F401 - sha256_file is imported from here
from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import write_json
from nextstep_trt.core.jsonfile import field, read_json
from nextstep_trt.core.paths import inside
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.resources import versions as installed_versions
from nextstep_trt.ref.config import NextStepConfig, config_from_dicts, model_config_dict, vae_config_dict
from nextstep_trt.ref.identity import identity_problems, model_identity

from .filecheck import INTEGRITY, FileCheck, check_file, record_hashes, require_files
from .profile import GRAPHS, DeploymentProfile
from .spec import SPEC_VERSION, GraphSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HASH_NOTE_BYTES = 2**30           # a first check hashing more than this says so


def versions() -> dict:
    """Versions of the tools that made an artifact (those installed)."""
    return installed_versions(("nextstep-trt", "torch", "onnx", "onnxruntime", "onnxscript", "tensorrt-rtx",
                               "tensorrt"))


def _check_structure(path: Path, data: dict) -> None:
    """Every field the code reads, of the type it reads it as; a UserError naming the file and field."""
    where = str(path)
    model = field(data, "model", dict, where)
    field(model, "fingerprint", str, f"{where}: model")
    for key in ("config", "vae_config"):
        field(model, key, dict, f"{where}: model")
    if "source" in model:
        files = field(field(model, "source", dict, f"{where}: model"), "files", dict, f"{where}: model.source")
        if not all(isinstance(f, dict) for f in files.values()):
            raise UserError(f"{where}: model.source.files must map file names to objects")
    field(data, "profile", dict, where)
    for name, g in field(data, "graphs", dict, where).items():
        if name not in GRAPHS:
            raise UserError(f"{where}: unknown graph {name!r} (known: {', '.join(GRAPHS)})")
        field(g, "spec", dict, f"{where}: graphs.{name}")
        for p, entry in field(g, "precisions", dict, f"{where}: graphs.{name}").items():
            if p not in {q.value for q in Precision}:
                raise UserError(f"{where}: graphs.{name} has an unknown precision {p!r}")
            field(entry, "file", str, f"{where}: graphs.{name}.{p}")
            if "sha256" in entry:
                field(entry, "sha256", str, f"{where}: graphs.{name}.{p}")
            for key in ("hashes", "io_dtypes"):        # file -> sha256, tensor -> dtype
                value = entry.get(key, {})
                if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                    raise UserError(f"{where}: graphs.{name}.{p}.{key} must map names to strings")


def deployment_io_dtypes(entry: dict, deployment: str | None) -> dict[str, str]:
    """{tensor: dtype} where one deployment file of a precision entry differs from the entry's spec."""
    record = (entry.get("deployments") or {}).get(deployment) if deployment else None
    dtypes = record.get("io_dtypes", {}) if isinstance(record, dict) else {}
    if not isinstance(dtypes, dict) or not all(isinstance(v, str) for v in dtypes.values()):
        raise UserError(f"deployments.{deployment}.io_dtypes must map names to strings")
    return dtypes


class Manifest:
    """Read, update and save the manifest of an artifacts folder."""

    def __init__(self, root: Path, data: dict, force_hash: bool = False):
        self.root, self.data = Path(root), data
        self.hashes = HashCache(self.root / INTEGRITY, force=force_hash)
        self._verified: set[tuple[str, Precision]] = set()

    @classmethod
    def load(cls, root: str | Path, force_hash: bool = False) -> "Manifest":
        """The folder's manifest, its structure checked; ``force_hash``: every integrity check hashes in full."""
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise UserError(f"{root} has no {MANIFEST}: not an artifacts folder (run `nextstep-trt export`)")
        data = read_json(path, "manifest")
        if data.get("format_version") != FORMAT_VERSION or data.get("spec_version") != SPEC_VERSION:
            raise UserError(f"{path} has format/spec version {data.get('format_version')}/{data.get('spec_version')}; "
                            f"this nextstep-trt reads {FORMAT_VERSION}/{SPEC_VERSION}: re-export")
        _check_structure(path, data)
        return cls(Path(root), data, force_hash)

    @classmethod
    def open_for_export(cls, root: str | Path, cfg: NextStepConfig, profile: DeploymentProfile,
                        model_dir: str | Path | None = None) -> "Manifest":
        """The existing manifest if it is for the same model (config and, given ``model_dir``, the same files) and
        profile, else a fresh one."""
        fresh = cls(Path(root), {})
        source = model_identity(model_dir, fresh.hashes.sha256) if model_dir is not None else None
        try:
            old = cls.load(root)
            same_profile = old.data["profile"] == json.loads(json.dumps(profile.to_dict()))  # tuples read back as lists
            same_source = source is None or _same_files(old.data["model"].get("source"), source)
            if old.fingerprint == cfg.fingerprint() and same_profile and same_source:
                old.hashes.new |= fresh.hashes.new
                return old
        except UserError:
            pass
        model = {"fingerprint": cfg.fingerprint(), "config": model_config_dict(cfg),
                 "vae_config": vae_config_dict(cfg.vae)}
        fresh.data = {"format_version": FORMAT_VERSION, "spec_version": SPEC_VERSION,
                      "model": model | ({"source": source} if source else {}),
                      "profile": profile.to_dict(), "versions": versions(), "graphs": {}}
        return fresh

    @property
    def fingerprint(self) -> str:
        return self.data["model"]["fingerprint"]

    @property
    def config(self) -> NextStepConfig:
        where = f"{self.root / MANIFEST}: model"
        return config_from_dicts(self.data["model"]["config"], self.data["model"]["vae_config"], f"{where}.config",
                                 f"{where}.vae_config")

    @property
    def profile(self) -> DeploymentProfile:
        try:
            return DeploymentProfile.from_dict(self.data["profile"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{self.root / MANIFEST}: damaged profile ({type(err).__name__}: {err})") from None

    @property
    def graphs(self) -> list[str]:
        return list(self.data["graphs"])

    def check_model(self, cfg: NextStepConfig, model_dir: str | Path | None = None) -> str | None:
        """Refuse artifacts exported from another model: the config, and given ``model_dir`` its files (configs,
        tokenizer, weights when it has them); returns a note when only configs and tokenizer could be compared."""
        if cfg.fingerprint() != self.fingerprint:
            raise UserError(f"{self.root} was exported from another model (config fingerprint {self.fingerprint}, "
                            f"the model folder has {cfg.fingerprint()}): re-export")
        source = self.data["model"].get("source")
        if model_dir is None:
            return None
        if source is None:
            return f"{self.root} records no model files (an older export): --model {model_dir} checked by config only"
        before = self.hashes.hashed_bytes
        problems, weights = identity_problems(source, model_dir, self.hashes.sha256)
        self.hashes.save()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"{self.root} was exported from {source.get('path')}, but --model {model_dir} differs: "
                            f"{problems[0]}{more}: pass the model folder it was exported from, or re-export")
        hashed = self.hashes.hashed_bytes - before
        note = f"hashed {hashed / 1e9:.1f} GB of {model_dir} once to check it (stamped for later runs)" \
            if hashed > HASH_NOTE_BYTES else None
        if not weights:
            return (f"{model_dir} holds no weights (the graphs carry them): its config and tokenizer match those "
                    f"{self.root} was exported with")
        return note

    def entry(self, graph: str, precision: Precision = Precision.FP32) -> dict:
        g = self.data["graphs"].get(graph)
        if g is None:
            raise UserError(f"{self.root} has no {graph} graph (exported: {', '.join(self.graphs) or 'none'})")
        p = g["precisions"].get(Precision(precision).value)
        if p is None:
            raise UserError(f"{self.root} has no {Precision(precision).value} {graph} graph "
                            f"(have: {', '.join(g['precisions'])})")
        return p

    def graph_precisions(self, precision: Precision) -> dict[str, Precision]:
        """Each graph at ``precision`` where that graph was made, else at fp32 (e.g. the VAE has no fp8 graph)."""
        p = Precision(precision)
        out = {g: p if p.value in e["precisions"] else Precision.FP32 for g, e in self.data["graphs"].items()
               if p.value in e["precisions"] or Precision.FP32.value in e["precisions"]}
        if p not in out.values():
            raise UserError(f"{self.root} has no {p.value} graph (run `nextstep-trt quantize --precision {p.value}`)")
        return out

    def spec(self, graph: str, precision: Precision = Precision.FP32, deployment: str | None = None) -> GraphSpec:
        """The graph's spec, with the precision graph's I/O dtypes if they differ; with ``deployment`` (an int4/int8
        entry's "onnxruntime" or "tensorrt" file) also that file's own (the ONNX Runtime file's int8 KV cache)."""
        entry = self.entry(graph, precision)
        dtypes = entry.get("io_dtypes", {}) | deployment_io_dtypes(entry, deployment)
        try:
            return GraphSpec.from_dict(self.data["graphs"][graph]["spec"]).with_dtypes(dtypes)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{self.root / MANIFEST}: damaged spec of {graph} ({type(err).__name__}: {err})") from None

    def path(self, graph: str, precision: Precision = Precision.FP32, verify: bool = True) -> Path:
        """The graph file, inside the folder; with ``verify`` its bytes and its external data's are checked against
        the manifest (stat only when their stamps are unchanged). A UserError names a file that is gone or differs."""
        what = f"{self.root / MANIFEST}: {graph} [{Precision(precision).value}]"
        path = inside(self.root, self.entry(graph, precision)["file"], what, hidden=False)
        if not path.is_file():
            raise UserError(f"{path} is named in the manifest but missing")
        if verify:
            self.verify({graph: Precision(precision)})
        return path

    def verify(self, graphs: dict[str, Precision]) -> None:
        """Check the files of each (graph, precision) once per manifest object; stamps are saved afterwards."""
        for graph, precision in graphs.items():
            if (graph, precision) in self._verified:
                continue
            what = f"{self.root / MANIFEST}: {graph} [{Precision(precision).value}]"
            require_files(self.root, self.entry(graph, precision), self.hashes, what)
            self._verified.add((graph, precision))
        self.hashes.save()

    def check_all_files(self) -> list[FileCheck]:
        """Every recorded file of every graph and precision (a full hash each when loaded with ``force_hash``)."""
        out = []
        for graph, g in self.data["graphs"].items():
            for p, entry in g["precisions"].items():
                what = f"{self.root / MANIFEST}: {graph} [{p}]"
                hashes = entry.get("hashes") or {}
                if not hashes:
                    out.append(FileCheck(self.root / entry["file"], False, "no sha256 recorded (re-export)"))
                out += [check_file(self.root, rel, want, self.hashes, what) for rel, want in hashes.items()]
        self.hashes.save()
        return out

    def record_graph(self, spec: GraphSpec, export_sizes: dict, precision: Precision, record: dict) -> None:
        g = self.data["graphs"].setdefault(spec.name, {"spec": spec.to_dict(), "precisions": {}})
        g["spec"], g["export_sizes"] = spec.to_dict(), export_sizes
        g["precisions"][Precision(precision).value] = record
        self._verified.discard((spec.name, Precision(precision)))

    def hash_files(self, files: list[Path]) -> dict[str, str]:
        """rel path -> sha256 of installed files, for their record (and their stamps)."""
        return record_hashes(self.root, files, self.hashes)

    def save(self) -> None:
        write_json(self.root / MANIFEST, self.data)
        self.hashes.save()


def _same_files(old: dict | None, new: dict) -> bool:
    """Two model identities name the same files with the same bytes."""
    if not isinstance(old, dict) or not isinstance(old.get("files"), dict):
        return False
    def strip(files: dict) -> dict:
        return {k: (v.get("bytes"), v.get("sha256")) for k, v in files.items() if isinstance(v, dict)}

    return strip(old["files"]) == strip(new["files"])

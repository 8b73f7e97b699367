"""``ART/manifest.json``: what was exported, from which model, for which profile, and how it validated (torch-free)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import write_json
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.resources import versions as installed_versions
from nextstep_trt.ref.config import NextStepConfig, config_from_dicts, model_config_dict, vae_config_dict

from .profile import DeploymentProfile
from .spec import SPEC_VERSION, GraphSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    """Versions of the tools that made an artifact (those installed)."""
    return installed_versions(("nextstep-trt", "torch", "onnx", "onnxruntime", "onnxscript", "tensorrt-rtx",
                               "tensorrt"))


class Manifest:
    """Read, update and save the manifest of an artifacts folder."""

    def __init__(self, root: Path, data: dict):
        self.root, self.data = Path(root), data

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise UserError(f"{root} has no {MANIFEST}: not an artifacts folder (run `nextstep-trt export`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON: {err}") from None
        if data.get("format_version") != FORMAT_VERSION or data.get("spec_version") != SPEC_VERSION:
            raise UserError(f"{path} has format/spec version {data.get('format_version')}/{data.get('spec_version')}; "
                            f"this nextstep-trt reads {FORMAT_VERSION}/{SPEC_VERSION}: re-export")
        return cls(Path(root), data)

    @classmethod
    def open_for_export(cls, root: str | Path, cfg: NextStepConfig, profile: DeploymentProfile) -> "Manifest":
        """The existing manifest if it is for the same model and profile, else a fresh one."""
        try:
            old = cls.load(root)
            same_profile = old.data["profile"] == json.loads(json.dumps(profile.to_dict()))  # tuples read back as lists
            if old.fingerprint == cfg.fingerprint() and same_profile:
                return old
        except UserError:
            pass
        return cls(Path(root), {"format_version": FORMAT_VERSION, "spec_version": SPEC_VERSION,
                                "model": {"fingerprint": cfg.fingerprint(), "config": model_config_dict(cfg),
                                          "vae_config": vae_config_dict(cfg.vae)},
                                "profile": profile.to_dict(), "versions": versions(), "graphs": {}})

    @property
    def fingerprint(self) -> str:
        return self.data["model"]["fingerprint"]

    @property
    def config(self) -> NextStepConfig:
        return config_from_dicts(self.data["model"]["config"], self.data["model"]["vae_config"])

    @property
    def profile(self) -> DeploymentProfile:
        return DeploymentProfile.from_dict(self.data["profile"])

    @property
    def graphs(self) -> list[str]:
        return list(self.data["graphs"])

    def check_model(self, cfg: NextStepConfig) -> None:
        """Refuse artifacts exported from another model."""
        if cfg.fingerprint() != self.fingerprint:
            raise UserError(f"{self.root} was exported from another model (config fingerprint {self.fingerprint}, "
                            f"the model folder has {cfg.fingerprint()}): re-export")

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

    def spec(self, graph: str, precision: Precision = Precision.FP32) -> GraphSpec:
        """The graph's spec, with the precision graph's I/O dtypes if they differ."""
        spec = GraphSpec.from_dict(self.data["graphs"][graph]["spec"]) if graph in self.data["graphs"] else None
        entry = self.entry(graph, precision)
        return spec.with_dtypes(entry.get("io_dtypes", {}))

    def path(self, graph: str, precision: Precision = Precision.FP32) -> Path:
        """The graph file; a UserError if the manifest names it but it is gone."""
        path = self.root / self.entry(graph, precision)["file"]
        if not path.is_file():
            raise UserError(f"{path} is named in the manifest but missing")
        return path

    def record_graph(self, spec: GraphSpec, export_sizes: dict, precision: Precision, record: dict) -> None:
        g = self.data["graphs"].setdefault(spec.name, {"spec": spec.to_dict(), "precisions": {}})
        g["spec"], g["export_sizes"] = spec.to_dict(), export_sizes
        g["precisions"][Precision(precision).value] = record

    def save(self) -> None:
        write_json(self.root / MANIFEST, self.data)

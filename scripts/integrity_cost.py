"""What the integrity checks cost at load, for one artifacts folder: the first use after a change (a full sha256
of every graph and external-data file) against later loads (stat stamps), next to ONNX Runtime's session creation
of the same graphs for scale. Usage: python scripts/integrity_cost.py ART (the README's "Artifact integrity")."""
import sys
import time
from pathlib import Path

import onnxruntime as ort

from nextstep_trt.core.precision import Precision
from nextstep_trt.export.filecheck import graph_files
from nextstep_trt.export.manifest import Manifest


def verify_all(art: Path) -> float:
    start = time.perf_counter()
    manifest = Manifest.load(art)
    manifest.verify({g: Precision.FP32 for g in manifest.graphs})
    return time.perf_counter() - start


def main(art: Path) -> None:
    store = art / ".integrity.json"
    firsts, laters = [], []
    for _ in range(3):
        store.unlink(missing_ok=True)          # no stamps: every file is hashed in full
        time.sleep(0.2)                        # past the racy window, so the stamps written now are trusted
        firsts.append(verify_all(art))
        laters.append(min(verify_all(art) for _ in range(5)))
    manifest = Manifest.load(art)
    size = sum(p.stat().st_size for g in manifest.graphs for p in graph_files(manifest.path(g)))
    start = time.perf_counter()
    for g in manifest.graphs:
        ort.InferenceSession(str(manifest.path(g)), providers=["CPUExecutionProvider"])
    sessions = time.perf_counter() - start
    print(f"{art}: {size / 1e6:.1f} MB in {len(manifest.graphs)} graphs; first use (sha256 of every file) "
          f"{min(firsts) * 1e3:.1f} ms, later loads (stat stamps) {min(laters) * 1e3:.2f} ms; ONNX Runtime session "
          f"creation of those graphs {sessions * 1e3:.0f} ms")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

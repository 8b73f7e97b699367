"""Profiles a user picks work end to end: validation (and generation) stay inside the exported batch range, here at
--max-batch 1 (the edge setting, static dims) with a single resolution, text to image; the session's artifacts cover the default
(4); --no-edit's graph set and row counts are checked on the specs (the demo exports a text-to-image profile)."""
import pytest
from PIL import Image

from nextstep_trt.cli import main
from nextstep_trt.export.manifest import Manifest

pytestmark = pytest.mark.slow(seconds=45)      # idle seconds, roughly: scheduled first (tests/conftest.py)


@pytest.mark.parametrize("max_batch,extra", [(1, ["--no-edit"])])
def test_export_validate_and_generate_at_a_small_max_batch(tiny_dir, tmp_path, max_batch, extra):
    art = tmp_path / "art"
    assert main(["export", "--model", str(tiny_dir), "--out", str(art), "--resolutions", "32x32", "--steps", "2",
                 "--max-text-tokens", "8", "--max-batch", str(max_batch), *extra]) == 0
    manifest = Manifest.load(art)
    for graph in manifest.graphs:
        entry = manifest.entry(graph)
        assert entry["validated"] and entry["validation"]["ok"], (graph, entry["validation"])
    rows = manifest.spec("backbone").profiles[0].dim("rows")
    assert rows.max == max_batch * (2 if "--no-edit" in extra else 3)
    out = tmp_path / "x.png"
    assert main(["generate", "--backend", "onnxruntime", "--model", str(tiny_dir), "--artifacts", str(art),
                 "--prompt", "a cat", "--height", "32", "--width", "32", "--steps", "2", "--cfg", "2",
                 "--images-per-prompt", str(max_batch), "--quiet", "--out", str(out)]) == 0
    assert Image.open(out if max_batch == 1 else tmp_path / "x_1.png").size == (32, 32)
    assert main(["generate", "--backend", "onnxruntime", "--model", str(tiny_dir), "--artifacts", str(art),
                 "--prompt", "a cat", "--height", "32", "--width", "32", "--steps", "2", "--quiet",
                 "--images-per-prompt", str(max_batch + 1), "--out", str(tmp_path / "y.png")]) == 2


def test_no_edit_drops_the_editing_graphs_and_the_image_row():
    from nextstep_trt.cli import _available, build_parser
    from nextstep_trt.commands.export import profile_from_args
    from nextstep_trt.export.profile import EDIT_GRAPHS, GRAPHS, graph_specs
    from nextstep_trt.ref.config import tiny

    def specs(*extra):
        args = build_parser(_available()).parse_args(["export", "--model", "m", "--out", "o", "--max-batch", "2",
                                                      "--resolutions", "32x32", *extra])
        return graph_specs(tiny(), profile_from_args(args))

    full, t2i = specs(), specs("--no-edit")
    assert set(full) == set(GRAPHS) and set(t2i) == set(GRAPHS) - set(EDIT_GRAPHS)
    assert full["backbone"].profiles[0].dim("rows").max == 2 * 3 and t2i["backbone"].profiles[0].dim("rows").max == 2 * 2

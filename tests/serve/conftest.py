"""A live `nextstep-trt serve` on loopback with the tiny model, started once per module and always stopped."""
import pytest
from serve_live import LiveServer


@pytest.fixture(scope="module")
def server(tiny_dir, tiny_artifacts, tmp_path_factory):
    """The t2i and edit models, batches up to 4, a short queue delay so batches form under concurrency."""
    live = LiveServer(tiny_dir, tiny_artifacts[0], tmp_path_factory.mktemp("serve") / "serve.log",
                      "--max-batch", "4", "--max-queue-delay-ms", "30")
    live.start()
    yield live
    live.stop()

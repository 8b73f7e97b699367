"""Shutdown of a live server is clean: exit 0, no process left, ports released, workspace removed; a busy port
is refused before anything starts."""
import re
import socket
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.http", reason="serving extra not installed: pip install 'nextstep-trt[serve]'")
pytest.importorskip("pytriton", reason="serving extra not installed: pip install 'nextstep-trt[serve]'")

from serve_live import LiveServer, port_free

from nextstep_trt.cli import main
from nextstep_trt.serve.client import Client, ImageRequest


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_everything(tiny_dir, tiny_artifacts, tmp_path):
    live = LiveServer(tiny_dir, tiny_artifacts[0], tmp_path / "serve.log", "--no-edit", "--exit-timeout", "10")
    live.start()
    try:
        client = Client(live.url)
        assert client.infer(ImageRequest("a red fox", height=32, width=32)).shape == (32, 32, 3)
        client.close()
        tree = live.tree()
        workdir = Path(re.search(r"model_repository_path\[0\]\s*\|\s*(\S+)/repo", live.log_text()).group(1))
        assert workdir.is_dir() and len(tree) >= 3       # serve, tritonserver, one backend stub
        code = live.stop()
    finally:
        live.stop()
    assert code == 0 and "nextstep-trt serve: stopped" in live.log_text()
    own = live.own_output()           # serve prints its own few lines; Triton's ~100 go to --log-file
    assert "model_repository_path" not in own and len(own.splitlines()) <= 12, own
    assert "ready on 127.0.0.1" in own and str(live.triton_log) in own
    assert not [pid for pid in tree if _alive(pid)]
    assert all(port_free(p) for p in live.ports)
    assert not workdir.exists()


def test_busy_port_is_refused(tiny_dir, tiny_artifacts, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve", "--model", str(tiny_dir), "--artifacts", str(tiny_artifacts[0]), "--http-port", str(port),
                "--grpc-port", "0", "--metrics-port", "0"]
        assert main(argv) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

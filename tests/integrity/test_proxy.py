"""serve/proxy/nginx.conf + triton_guard.js, run as shipped (ports and paths rewritten) in front of a stand-in
upstream that answers 200 to everything: proves the guard's own decisions (400 for a body that is not a JSON
inference request, 413 over the size cap, valid requests and health checks passed through). Triton's 500 for those
bodies is in /tmp/research/triton.md's table, not re-measured here. Skips when nginx or its njs module is missing."""
from __future__ import annotations

import http.client
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[2] / "serve" / "proxy"
NJS = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Stands in for Triton: 200 and the byte count for every request."""

    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({"upstream": True, "bytes": len(self.rfile.read(n))}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    nginx = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin:/sbin"))
    if nginx is None or not NJS.is_file():
        pytest.skip("nginx with the njs module is not installed (apt-get install nginx-light libnginx-mod-http-js)")
    prefix = tmp_path_factory.mktemp("proxy")
    (prefix / "tmp").mkdir()
    up_port, port = _free_port(), _free_port()
    conf = (PROXY / "nginx.conf").read_text()
    for old, new in (("server 127.0.0.1:8000;", f"server 127.0.0.1:{up_port};"),
                     ("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};"),
                     ("client_max_body_size 8m;", "client_max_body_size 64k;"),
                     ("client_body_buffer_size 8m;", "client_body_buffer_size 64k;")):
        assert old in conf, old
        conf = conf.replace(old, new)
    (prefix / "nginx.conf").write_text(conf)
    shutil.copy(PROXY / "triton_guard.js", prefix)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", up_port), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):               # wait until nginx accepts connections (or died)
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {proc.stdout.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.shutdown()


def _post(port: int, body: bytes, path: str = "/v2/models/nextstep_t2i/infer") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, {"raw": data.decode(errors="replace")}


VALID = json.dumps({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1, 1], "data": ["a fox"]}]}).encode()


@pytest.mark.parametrize("body,message", [
    (b"hello not json", "not valid JSON"),
    (b'{"inputs":[', "not valid JSON"),
    (b"", "empty request body"),
    (b"[1,2,3]", "must be an object"),
    (b"{}", "'inputs' array"),
    (b'{"inputs":[{"name":"prompt","shape":[1,1]}]}', "string 'datatype'"),
])
def test_guard_answers_400(proxy, body, message):
    status, reply = _post(proxy, body)
    assert status == 400 and message in reply["error"], reply


def test_valid_request_and_health_reach_the_upstream(proxy):
    status, reply = _post(proxy, VALID)
    assert status == 200 and reply == {"upstream": True, "bytes": len(VALID)}
    status, reply = _post(proxy, VALID, "/v2/models/nextstep_t2i/versions/1/infer")
    assert status == 200 and reply["upstream"]
    conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
    conn.request("GET", "/v2/health/ready")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["upstream"]


def test_body_over_the_cap_gets_413(proxy):
    status, _ = _post(proxy, b'{"inputs": []}' + b" " * (70 * 1024))
    assert status == 413

"""A live Triton server on loopback with the tiny model: same pixels as `generate`, 64 concurrent requests batched,
clear errors for bad requests while it keeps serving, health and metrics."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.http", reason="serving extra not installed: pip install 'nextstep-trt[serve]'")
pytest.importorskip("tritonclient.grpc", reason="serving extra not installed: pip install 'nextstep-trt[serve]'")
pytest.importorskip("pytriton", reason="serving extra not installed: pip install 'nextstep-trt[serve]'")

from serve_live import http, rss_mb

from nextstep_trt.cli import main
from nextstep_trt.core.errors import UserError
from nextstep_trt.serve.client import Client, ImageRequest


def _cli_image(tiny_dir, tiny_artifacts, tmp_path, command: str, *flags: str) -> np.ndarray:
    out = tmp_path / f"{command}.png"
    argv = [command, "--backend", "onnxruntime", "--model", str(tiny_dir), "--artifacts", str(tiny_artifacts[0]),
            "--steps", "3", "--quiet", "--out", str(out), *flags]
    assert main(argv) == 0
    return np.asarray(Image.open(out))


def test_same_pixels_as_generate_over_http_and_grpc(server, tiny_dir, tiny_artifacts, tmp_path):
    want = _cli_image(tiny_dir, tiny_artifacts, tmp_path, "generate", "--prompt", "a red fox", "--height", "48",
                      "--width", "32", "--seed", "7", "--cfg", "5.0", "--negative-prompt", "blurry")
    req = ImageRequest("a red fox", height=48, width=32, steps=3, seed=7, cfg=5.0, negative_prompt="blurry")
    for url in (server.url, server.grpc_url):
        client = Client(url)
        got = client.infer(req)
        client.close()
        assert got.dtype == np.uint8 and np.array_equal(got, want), url


def test_client_command_writes_the_png(server, tmp_path):
    out = tmp_path / "c.png"
    assert main(["client", "--url", server.url, "--prompt", "a red fox", "--height", "32", "--width", "32",
                 "--seed", "3", "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]   # atomic: no temporary left behind


def test_edit_same_pixels_as_edit_command(server, tiny_dir, tiny_artifacts, tmp_path):
    from nextstep_trt.runtime.cases import source_image

    src = tmp_path / "src.png"
    Image.fromarray(source_image(32, 32)).save(src)
    want = _cli_image(tiny_dir, tiny_artifacts, tmp_path, "edit", "--prompt", "make it blue", "--image", str(src),
                      "--height", "32", "--width", "32", "--seed", "5")
    client = Client(server.url)
    got = client.infer(ImageRequest("make it blue", steps=3, seed=5, image=np.asarray(Image.open(src))))
    client.close()
    assert np.array_equal(got, want)


def _run_all(url: str, requests: list[ImageRequest], workers: int) -> list:
    """Every request from ``workers`` threads, one client each (closed after): images or UserErrors."""
    local, clients = threading.local(), []

    def one(req):
        if not hasattr(local, "client"):
            local.client = Client(url)
            clients.append(local.client)
        try:
            return local.client.infer(req)
        except UserError as err:
            return err

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, requests))
    for c in clients:
        c.close()
    return results


def _solo_images(tiny_dir, tiny_artifacts, keys) -> dict:
    """Each (height, width, seed) generated alone in this process."""
    from nextstep_trt.ref.options import GenerationOptions
    from nextstep_trt.runtime.api import model_tokenizer, open_backend
    from nextstep_trt.runtime.loop import Request, run_request

    out = {}
    with open_backend("onnxruntime", tiny_dir, tiny_artifacts[0], threads=1) as backend:
        tok = model_tokenizer(tiny_dir, backend.config)
        for h, w, seed in keys:
            opts = GenerationOptions(height=h, width=w, steps=3)
            out[h, w, seed] = run_request(backend, tok, Request(["a red fox"], opts, seeds=[seed]))[0]
    return out


def test_64_concurrent_requests_batched_deterministic_bounded_memory(server, tiny_dir, tiny_artifacts):
    sizes = [(32, 32), (48, 32)]
    keys = [(*sizes[(i // 8) % 2], i % 8) for i in range(64)]        # 16 (size, seed) pairs, 4 requests each
    requests = [ImageRequest("a red fox", height=h, width=w, seed=s) for h, w, s in keys]
    count0 = server.metric("nv_inference_count", "nextstep_t2i")
    execs0 = server.metric("nv_inference_exec_count", "nextstep_t2i")
    rss0 = rss_mb(server.tree())
    first = _run_all(server.url, requests, 16)
    rss1 = rss_mb(server.tree())
    second = _run_all(server.url, requests[::-1], 16)[::-1]
    rss2 = rss_mb(server.tree())
    errors = [r for r in first + second if not isinstance(r, np.ndarray)]
    assert not errors, errors[:3]
    for (h, w, _), a, b in zip(keys, first, second):
        assert a.shape == (h, w, 3) and a.dtype == np.uint8
    # same seed and size -> the same pixels, whichever requests shared its batch, and as when generated alone
    solo = _solo_images(tiny_dir, tiny_artifacts, set(keys))
    for key, a, b in zip(keys, first, second):
        assert np.array_equal(a, solo[key]) and np.array_equal(b, solo[key]), key
    assert len({solo[k].tobytes() for k in set(keys)}) == 16
    # Triton batched them: 128 images in fewer executions
    images = server.metric("nv_inference_count", "nextstep_t2i") - count0
    execs = server.metric("nv_inference_exec_count", "nextstep_t2i") - execs0
    assert images == 128 and execs < 100, (images, execs)
    # resident memory of serve + tritonserver + stubs: bounded, and flat on the second round (loose bounds)
    assert rss1 - rss0 < 300 and rss2 - rss1 < 50, (rss0, rss1, rss2)
    print(f"rss MB {rss0:.0f} -> {rss1:.0f} -> {rss2:.0f}; {images:.0f} images in {execs:.0f} executions")


def _infer_json(server, model: str, inputs: list[dict]) -> tuple[int, dict | str]:
    return http("POST", f"{server.url}/v2/models/{model}/infer", {"inputs": inputs})


def _t(name, datatype, data, shape=(1, 1)):
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


GOOD = [_t("prompt", "BYTES", ["a red fox"]), _t("height", "INT32", [32]), _t("width", "INT32", [32])]
BAD = [
    ("missing prompt", [_t("height", "INT32", [32])], "missing input 'prompt'"),
    ("wrong dtype", [_t("prompt", "BYTES", ["a"]), _t("height", "FP32", [32.0])], "expects 'INT32'"),
    ("height not a multiple of 16", GOOD[:1] + [_t("height", "INT32", [40])], "height 40 is not a multiple of 16"),
    ("steps beyond the profile", GOOD + [_t("steps", "INT32", [50])], "steps 50 is outside 1..3"),
    ("size beyond the profile", GOOD[:1] + [_t("height", "INT32", [128]), _t("width", "INT32", [128])],
     "outside the exported profile"),
    ("oversized prompt", [_t("prompt", "BYTES", ["x" * (1 << 20)])], "prompt is 1048576 bytes; the cap is 2048"),
    ("batch beyond max", [_t("prompt", "BYTES", ["a"] * 5, (5, 1))], "must be <= 4"),
    ("unknown input", GOOD + [_t("path", "BYTES", ["/etc/passwd"])], "unexpected inference input 'path'"),
]


@pytest.mark.parametrize("what,inputs,message", BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_400_and_server_keeps_serving(server, what, inputs, message):
    status, body = _infer_json(server, "nextstep_t2i", inputs)
    assert status == 400 and message in body["error"], (status, body)
    assert "Traceback" not in body["error"]
    status, body = _infer_json(server, "nextstep_t2i", GOOD)
    assert status == 200 and body["outputs"][0]["shape"] == [1, 32, 32, 3]


def test_huge_body_is_refused_and_server_survives(server):
    client = Client(server.url)
    with pytest.raises(UserError, match="the cap is 2048"):
        client.infer(ImageRequest("x" * (16 << 20), height=32, width=32))
    assert client.infer(ImageRequest("a red fox", height=32, width=32)).shape == (32, 32, 3)
    client.close()


def test_bad_requests_do_not_fail_their_batch_mates(server):
    requests = [ImageRequest("a red fox", height=32, width=32, seed=i, steps=3 if i % 2 else 9) for i in range(8)]
    results = _run_all(server.url, requests, 8)
    for i, r in enumerate(results):
        if i % 2:
            assert isinstance(r, np.ndarray) and r.shape == (32, 32, 3)
        else:
            assert isinstance(r, UserError) and "steps 9" in str(r) and "400" in str(r)


def test_health_readiness_metadata_and_metrics(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/nextstep_t2i/ready",
                 "/v2/models/nextstep_edit/ready"):
        assert http("GET", server.url + path)[0] == 200, path
    status, meta = http("GET", server.url + "/v2/models/nextstep_t2i")
    assert status == 200 and {i["name"] for i in meta["inputs"]} >= {"prompt", "height", "width", "seed", "cfg"}
    assert meta["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    assert server.metric("nv_inference_request_success", "nextstep_t2i") >= 1
    assert server.metric("nv_inference_request_failure", "nextstep_t2i") >= 0

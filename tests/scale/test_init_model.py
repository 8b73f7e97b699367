"""init-model: streamed, reproducible tensor by tensor, loadable, and light on memory."""
import json
import subprocess
import sys

import torch

from nextstep_trt.cli import main

RSS_SCRIPT = """
import resource, sys
import torch
from nextstep_trt.ref.config import bench
from nextstep_trt.ref import streaming
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
streaming.init_model_folder(sys.argv[1], bench(), "fp32", seed=1, max_shard_bytes=10**8, log=lambda *_: None)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_bench_streams_with_little_memory_and_loads(tmp_path):
    """Writing 0.45 GB of fp32 bench weights raises peak RSS far less than holding them would."""
    from nextstep_trt.ref.checkpoint import load_model
    from nextstep_trt.ref.config import bench
    from nextstep_trt.ref.streaming import random_tensor, weight_bytes

    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "bench")], capture_output=True,
                         text=True, check=True)
    base, peak = (int(v) for v in out.stdout.split()[-2:])
    model_bytes = sum(weight_bytes(bench(), "fp32"))
    assert model_bytes > 4 * 10**8 and peak - base < 0.5 * model_bytes, (base, peak, model_bytes)
    index = json.loads((tmp_path / "bench" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 5
    bundle = load_model(tmp_path / "bench", with_tokenizer=False)
    key = "layers.5.mlp.down_proj.weight"                  # generated alone, it equals the stored tensor
    assert torch.equal(bundle.model.state_dict()[key], random_tensor(key, (1024, 2816), seed=1))


def test_init_model_cli_bf16_is_reproducible(tmp_path, capsys):
    from safetensors import safe_open

    from nextstep_trt.ref.checkpoint import load_model

    for name in ("a", "b"):
        assert main(["init-model", "--preset", "tiny", "--dtype", "bf16", "--seed", "5", str(tmp_path / name)]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert json.loads((a / "config.json").read_text())["torch_dtype"] == "bfloat16"
    for shard in a.glob("*.safetensors"):
        assert shard.read_bytes() == (b / shard.name).read_bytes()
        with safe_open(str(shard), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    bundle = load_model(a)                                   # tokenizer included
    assert bundle.tokenizer.convert_tokens_to_ids("<|begin_of_image|>") == bundle.config.tokens.boi
    assert not list(tmp_path.glob(".*"))                     # no temporary folder left behind

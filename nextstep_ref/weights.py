"""Checkpoint layout: the explicit key -> shape map, loading and saving (sharded safetensors + index, VAE folder)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from nextstep_trt.core.errors import UserError

from .config import BackboneConfig, HeadConfig, NextStepConfig, VAEConfig

INDEX_NAME = "model.safetensors.index.json"
# Keys the official checkpoints may carry that the reference does not use.
IGNORED_KEYS = ("gen_pos_embed",)


def backbone_shapes(cfg: BackboneConfig) -> dict[str, tuple[int, ...]]:
    """Every backbone key with its shape (no ``model.`` prefix)."""
    h, q, kv, ff = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    out = {"embed_tokens.weight": (cfg.vocab_size, h), "norm.weight": (h,), "lm_head.weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        out |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h),
                p + "mlp.down_proj.weight": (h, ff)}
        if cfg.attention_bias:
            out |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,)}
        if cfg.o_attention_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
    return out


def _linear(name: str, out_f: int, in_f: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out_f, in_f), f"{name}.bias": (out_f,)}


def head_shapes(cfg: HeadConfig, prefix: str = "image_head.net.") -> dict[str, tuple[int, ...]]:
    """Every flow-head key with its shape."""
    d, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    out = _linear("input_proj", d, cfg.input_dim) | _linear("cond_embed", d, cfg.cond_dim)
    out |= _linear("time_embed.mlp.0", d, cfg.freq_dim) | _linear("time_embed.mlp.2", d, d)
    for i in range(cfg.layers):
        p = f"res_blocks.{i}."
        out |= {p + "in_ln.weight": (d,), p + "in_ln.bias": (d,)}
        out |= _linear(p + "mlp.0", hidden, d) | _linear(p + "mlp.2", d, hidden)
        out |= _linear(p + "adaLN_modulation.1", 3 * d, d)
    out |= _linear("final_layer.adaLN_modulation.1", 2 * d, d) | _linear("final_layer.linear", cfg.input_dim, d)
    return {prefix + k: v for k, v in out.items()}


def model_shapes(cfg: NextStepConfig) -> dict[str, tuple[int, ...]]:
    """The whole AR model: backbone, projectors, head."""
    h = cfg.backbone.hidden_size
    out = backbone_shapes(cfg.backbone)
    out |= _linear("image_in_projector", h, cfg.token_dim) | _linear("image_out_projector", h, h)
    return out | head_shapes(cfg.head)


def _conv(name: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)}


def _gn(name: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (ch,), f"{name}.bias": (ch,)}


def _resnet(name: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    out = _gn(f"{name}.norm1", cin) | _conv(f"{name}.conv1", cout, cin, 3)
    out |= _gn(f"{name}.norm2", cout) | _conv(f"{name}.conv2", cout, cout, 3)
    return out | (_conv(f"{name}.nin_shortcut", cout, cin, 1) if cin != cout else {})


def _mid(name: str, ch: int) -> dict[str, tuple[int, ...]]:
    out = _resnet(f"{name}.block_1", ch, ch) | _resnet(f"{name}.block_2", ch, ch) | _gn(f"{name}.attn_1.norm", ch)
    for conv in ("q", "k", "v", "proj_out"):
        out |= _conv(f"{name}.attn_1.{conv}", ch, ch, 1)
    return out


def vae_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every VAE key (Flux names; ``up.{i}`` is level i, 0 = full resolution) with its shape."""
    chans = [cfg.ch * m for m in cfg.ch_mult]
    last = len(chans) - 1
    out = _conv("encoder.conv_in", cfg.ch, cfg.in_channels, 3)
    for i, (cin, cout) in enumerate(zip([cfg.ch] + chans[:-1], chans)):
        for j in range(cfg.num_res_blocks):
            out |= _resnet(f"encoder.down.{i}.block.{j}", cin if j == 0 else cout, cout)
        if i != last:
            out |= _conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    out |= _mid("encoder.mid", chans[-1]) | _gn("encoder.norm_out", chans[-1])
    out |= _conv("encoder.conv_out", 2 * cfg.z_channels, chans[-1], 3)
    out |= _conv("decoder.conv_in", chans[-1], cfg.z_channels, 3) | _mid("decoder.mid", chans[-1])
    for i, (cin, cout) in enumerate(zip(chans[1:] + [chans[-1]], chans)):
        for j in range(cfg.num_res_blocks + 1):
            out |= _resnet(f"decoder.up.{i}.block.{j}", cin if j == 0 else cout, cout)
        if i != 0:
            out |= _conv(f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    return out | _gn("decoder.norm_out", chans[0]) | _conv("decoder.conv_out", cfg.out_ch, chans[0], 3)


def check_keys(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """One error naming every missing, unexpected and misshaped tensor."""
    problems = [f"missing {k} {list(v)}" for k, v in expected.items() if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected and not k.startswith(IGNORED_KEYS)]
    problems += [f"wrong shape {k}: {list(found[k])}, expected {list(v)}"
                 for k, v in expected.items() if k in found and tuple(found[k]) != tuple(v)]
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise UserError(f"{where}: {len(problems)} checkpoint problem(s): {shown}")


# --- sharded safetensors -------------------------------------------------------------------------------------------

def shard_files(model_dir: Path) -> dict[str, str]:
    """key -> shard file name, from the index (or the single ``model.safetensors``)."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise UserError(f"{index} is not a safetensors index: {err}") from None
        missing = sorted({f for f in weight_map.values() if not (model_dir / f).is_file()})
        if missing:
            raise UserError(f"{model_dir}: shard(s) named in the index are missing: {', '.join(missing)}")
        return weight_map
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{model_dir} has neither {INDEX_NAME} nor model.safetensors")
    from safetensors import safe_open

    with safe_open(single, "np") as f:
        return {k: single.name for k in f.keys()}


def safetensors_shapes(model_dir: Path, weight_map: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor, read from the shard headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(set(weight_map.values())):
        with safe_open(model_dir / shard, "np") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    unindexed = sorted(set(shapes) ^ set(weight_map))
    if unindexed:
        raise UserError(f"{model_dir}: index and shards disagree on {len(unindexed)} key(s), e.g. {unindexed[0]}")
    return shapes


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Group keys, in order, into shards of at most max_shard_bytes (a bigger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, nbytes in sizes:
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += nbytes
    return shards


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def index_json(weight_map: dict[str, str], total_size: int) -> dict:
    return {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}


def iter_shard_tensors(model_dir: Path, weight_map: dict[str, str], framework: str = "pt") -> Iterator[tuple[str, object]]:
    """Yield (key, tensor) shard by shard, one tensor in memory at a time."""
    from safetensors import safe_open

    for shard in sorted(set(weight_map.values())):
        with safe_open(model_dir / shard, framework) as f:
            for key in f.keys():
                yield key, f.get_tensor(key)

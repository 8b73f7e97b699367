"""Checkpoint layout: the explicit key -> shape map, loading and saving (sharded safetensors + index, VAE folder)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
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

# bytes per element of every safetensors dtype code
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000     # the safetensors library's own limit


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a safetensors header: dtype code, shape, byte range from the start of the file."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _header_bytes(path: Path) -> tuple[bytes, int]:
    """The raw JSON header of a safetensors file and the file's size; a UserError naming the file otherwise."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise UserError(f"{path}: not a safetensors file (claims a {n}-byte header; the file has {size} bytes)")
            return f.read(n), size
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def read_safetensors_header(path: str | Path) -> tuple[dict[str, HeaderEntry], bytes]:
    """Every tensor of a safetensors file and the raw header bytes, read from its header only (torch-free): a
    truncated file, a damaged or foreign header, or a byte range outside the file is a UserError naming it."""
    path = Path(path)
    raw, size = _header_bytes(path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: damaged safetensors header ({str(err)[:120]})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: damaged safetensors header (not a JSON object)")
    out, data_start = {}, 8 + len(raw)
    for key, info in header.items():
        if key == "__metadata__":
            continue
        ok = isinstance(info, dict) and info.get("dtype") in SAFETENSORS_ITEMSIZE
        ok = ok and isinstance(info.get("shape"), list) and all(isinstance(d, int) and d >= 0 for d in info["shape"])
        offsets = info.get("data_offsets") if ok else None
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        if not ok:
            raise UserError(f"{path}: damaged safetensors header entry for {key!r}: {json.dumps(info)[:120]}")
        begin, end = offsets
        want = math.prod(info["shape"]) * SAFETENSORS_ITEMSIZE[info["dtype"]]
        if not 0 <= begin <= end or end - begin != want or data_start + end > size:
            raise UserError(f"{path}: {key} byte range {begin}..{end} does not fit its shape {info['shape']} "
                            f"{info['dtype']} or the file ({size} bytes; truncated?)")
        out[key] = HeaderEntry(info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end)
    return out, raw


def read_index(model_dir: Path) -> dict[str, str] | None:
    """key -> shard file of ``model.safetensors.index.json`` (None when there is no index); every shard name must
    stay inside the model folder."""
    from nextstep_trt.core.jsonfile import read_json
    from nextstep_trt.core.paths import inside

    index = model_dir / INDEX_NAME
    if not index.exists():
        return None
    weight_map = read_json(index, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{index} is not a safetensors index: 'weight_map' must map tensor names to shard files")
    for shard in set(weight_map.values()):
        inside(model_dir, shard, f"{index}: shard")
    return weight_map


def shard_files(model_dir: Path) -> dict[str, str]:
    """key -> shard file name, from the index (or the single ``model.safetensors``)."""
    weight_map = read_index(model_dir)
    if weight_map is not None:
        missing = sorted({f for f in weight_map.values() if not (model_dir / f).is_file()})
        if missing:
            raise UserError(f"{model_dir}: shard(s) named in the index are missing: {', '.join(missing)}")
        return weight_map
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{model_dir} has neither {INDEX_NAME} nor model.safetensors")
    return {k: single.name for k in read_safetensors_header(single)[0]}


def safetensors_shapes(model_dir: Path, weight_map: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor, read from the shard headers only."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(set(weight_map.values())):
        shapes |= {key: e.shape for key, e in read_safetensors_header(model_dir / shard)[0].items()}
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
        read_safetensors_header(model_dir / shard)          # a damaged header is named before the library sees it
        with safe_open(model_dir / shard, framework) as f:
            for key in f.keys():
                yield key, f.get_tensor(key)

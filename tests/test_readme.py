"""The README's Python example runs as printed, on a tiny model instead of SmolLM2 (same calls, same arguments)."""

import functools
import re
from pathlib import Path

import numpy as np
import pytest

import innerpissa.eval.score
import innerpissa.models
from innerpissa.testing import tiny_model

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert 'load_model("smollm2-135m")' in code
    monkeypatch.setattr(innerpissa.models, "load_model", lambda spec: tiny_model("llama"))
    # a random tiny model puts little mass on Yes/No: keep every row, or every dilemma is dropped and the effect is NaN
    monkeypatch.setattr(innerpissa.eval.score, "score", functools.partial(innerpissa.eval.score.score, pmass_min=0.0))
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert np.isfinite(float(printed)), printed  # the side-balanced effect: a finite number of nats per unit c

"""The prompting gate: a known prompting effect qualifies a set, a flat one does not; the verdict file drives the
one-line warnings that `compare` prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from innerpissa.eval.gate import INSIDE_NULL, NOT_MEASURED, NOT_QUALIFIED, gate_warnings, prompt_gate, qualification
from test_eval_metrics import sided


def test_known_prompting_effect_qualifies_and_a_flat_one_does_not() -> None:
    """logratio = β·label·c + noise on 60 dilemmas with sides: β = 0.3 qualifies (its CI holds β, above 0); β = 0 does
    not. pmass_c0 is the median answer mass at c = 0 and the null band is mean ± t·sd·sqrt(1 + 1/n) of the nulls."""
    moved = sided(40, 20, lambda side, lab, c, rng: 0.3 * lab * c + rng.normal(0, 0.2), seed=1)
    moved.loc[moved["coeff"] == 0.0, "pmass"] = np.linspace(0.5, 0.7, int((moved["coeff"] == 0.0).sum()))
    g = prompt_gate(moved, "t", [0.01, -0.02, 0.0, 0.015, -0.005], n_boot=300)
    assert g["qualifies"] and g["ci_low"] > 0 and g["ci_low"] < 0.3 < g["ci_high"]
    assert g["effect"] == pytest.approx(0.3, abs=0.05) and g["n_dilemmas"] == 60
    assert g["pmass_c0"] == pytest.approx(0.6)
    v = np.array([0.01, -0.02, 0.0, 0.015, -0.005])
    half = 2.7764451051977987 * v.std(ddof=1) * np.sqrt(1 + 1 / 5)  # t(0.975, 4) by hand
    assert (g["null_lo"], g["null_hi"], g["null_n"]) == (pytest.approx(v.mean() - half), pytest.approx(v.mean() + half), 5)
    assert g["above_null"] is True  # 0.3 against a band topping out near 0.04
    wide = prompt_gate(moved, "t", [0.5, -0.4, 0.1], n_boot=300)  # random directions that move it more than 0.3
    assert wide["qualifies"] and wide["above_null"] is False
    assert prompt_gate(moved, "t", [0.01, -0.02], n_boot=300)["above_null"] is None  # 2 seeds: no band drawn
    flat = sided(40, 20, lambda side, lab, c, rng: rng.normal(0, 0.2), seed=2)
    f = prompt_gate(flat, "t", n_boot=300)
    assert not f["qualifies"] and f["ci_low"] <= 0 and f["null_n"] == 0
    backwards = sided(40, 20, lambda side, lab, c, rng: -0.3 * lab * c + rng.normal(0, 0.2), seed=3)
    assert not prompt_gate(backwards, "t", n_boot=300)["qualifies"]  # a significant effect the wrong way is no gate


def test_verdict_file_gives_one_line_warnings(tmp_path: Path) -> None:
    path = tmp_path / "qualify.json"
    path.write_text(json.dumps({"m": {"dd-honesty": {"qualifies": True}, "truthfulqa-sample-200": {"qualifies": False}}}))
    assert qualification("m", "dd-honesty", path) is True and qualification("m", "dd-care", path) is None
    assert gate_warnings("m", ["dd-honesty"], path) == []
    warn = gate_warnings("m", ["dd-honesty", "truthfulqa-sample-200", "dd-care"], path)
    assert warn == [f"warning: m / truthfulqa-sample-200: {NOT_QUALIFIED}", f"warning: m / dd-care: {NOT_MEASURED}"]
    path.write_text(json.dumps({"smollm2-135m": {"dd-honesty": {"qualifies": False}}}))
    assert qualification("SmolLM2", "dd-honesty", path) is False  # a built-in under another of its names
    assert gate_warnings("other", ["dd-honesty"], tmp_path / "missing.json") == [f"warning: other / dd-honesty: {NOT_MEASURED}"]
    path.write_text(json.dumps({"m": {"dd-honesty": {"qualifies": True, "above_null": False},
                                      "dd-care": {"qualifies": True, "above_null": None}}}))
    assert gate_warnings("m", ["dd-honesty", "dd-care"], path) == [f"warning: m / dd-honesty: {INSIDE_NULL}"]


def test_compare_uses_the_variant_chosen_on_the_tuning_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import innerpissa.eval.gate as gate
    from innerpissa.experiments.compare import compare_configs

    path = tmp_path / "qualify.json"
    path.write_text(json.dumps({"qwen2.5-coder-1.5b": {"dd-honesty": {"qualifies": True, "variant": "engineered"}},
                                "smollm2-135m": {"dd-honesty": {"qualifies": False, "variant": "persona"}}}))
    monkeypatch.setattr(gate, "QUALIFY_PATH", path)

    def prompt_params(model: str, name: str = "prompt") -> dict:
        return compare_configs([name], 1, model, "honesty", ["dd-honesty"], [-1.0, 0.0, 1.0])[0].params

    assert prompt_params("qwen2.5-coder-1.5b") == {"variant": "engineered"}
    assert prompt_params("qwen2.5-coder-1.5b", "prompt_persona") == {}  # the gate's own persona runs stay persona
    assert prompt_params("smollm2-135m") == {} == prompt_params("tiny-llama")  # persona: the default, same hash

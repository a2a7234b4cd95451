"""KL calibration: the solver on known curves, the budget hit on a tiny model (KL recomputed independently,
one prompt at a time), prompting measured not solved, and the neutral prompts disjoint from train/eval text."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from _eval_steerers import AddVector
from innerpissa import DATA_DIR
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.eval.calibrate import CalibratedSteerer, KLMeter, calibrate, neutral_prompts, solve_coeff
from innerpissa.eval.datasets import load_dataset
from innerpissa.steerers.prompt import PromptSteerer
from innerpissa.testing import tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


@pytest.mark.parametrize("f, root", [
    (lambda c: 0.3 * c * c, math.sqrt(0.1 / 0.3)),                      # the small-c law KL ∝ c²
    (lambda c: 1 - math.exp(-abs(c) ** 0.7 / 50), 50 ** (1 / 0.7) * (-math.log(0.9)) ** (1 / 0.7)),  # slow, saturating
    (lambda c: 5.0 * c ** 4 if c < 0 else 1e-3 * c * c, (0.1 / 5) ** 0.25),  # steep on the negative side
])
def test_solve_coeff_finds_known_roots(f, root):
    sign = -1 if f(-1.0) != f(1.0) else 1
    c, v, ok, hist = solve_coeff(f, 0.1, sign, rtol=0.01, max_steps=12)
    assert ok and abs(v - 0.1) <= 0.001 and c * sign > 0
    assert abs(abs(c) - root) / root < 0.02
    assert len(hist) <= 12


def test_solve_coeff_reports_failure_on_a_flat_curve():
    c, v, ok, hist = solve_coeff(lambda c: 0.01, 0.1, 1, max_steps=6)
    assert not ok and v == 0.01 and len(hist) <= 6


def _independent_kl(model, tok, steer, c, prompts, n_new):
    """Per prompt, no padding: greedy steered rollout, then KL(base || steered) by F.kl_div on full logits."""
    end = tok.eos_token_id
    kls = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with steer(c):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        cont = out[0, ids.shape[1]:].tolist()
        if end in cont:
            cont = cont[: cont.index(end) + 1]
        full = torch.tensor([ids[0].tolist() + cont])
        with torch.no_grad():
            base = model(full).logits[0].log_softmax(-1)
            with steer(c):
                st = model(full).logits[0].log_softmax(-1)
        sl = slice(ids.shape[1] - 1, ids.shape[1] - 1 + len(cont))
        kls.append(F.kl_div(st[sl], base[sl], log_target=True, reduction="none").sum(-1))
    return torch.cat(kls)


@pytest.mark.parametrize("stat, budget", [("mean", 0.1), ("p95", 0.2)])
def test_calibration_hits_the_budget_on_a_tiny_model(tiny, stat, budget):
    model, tok = tiny
    torch.manual_seed(0)
    st = AddVector(torch.randn(model.config.hidden_size), layer=1)
    cal = calibrate(model, tok, st, budget, stat, n_prompts=4, max_new_tokens=8, rtol=0.05, max_steps=12)
    assert cal.converged_pos and cal.converged_neg
    assert cal.coeff_pos > 0 and cal.coeff_neg > 0
    for c in (cal.coeff_pos, -cal.coeff_neg):
        kl = _independent_kl(model, tok, lambda x: st.steer(model, x), c, neutral_prompts(4), 8)
        value = float(kl.mean()) if stat == "mean" else float(torch.quantile(kl.double(), 0.95))
        assert abs(value - budget) <= 0.06 * budget, (c, value)
    # in budget units, ±1 is the calibrated coefficient and 0 the base model
    unit = CalibratedSteerer(st, cal)
    meter = KLMeter(model, tok, unit, neutral_prompts(4), 8)
    assert meter.measure(0.0)["kl_mean"] < 1e-6  # KV-cached generation logits vs a full forward: float noise only
    assert abs(meter.measure(1.0)[f"kl_{stat}"] - cal.kl_pos) < 1e-4


def test_prompting_is_measured_at_plus_minus_one(tiny):
    model, tok = tiny
    pairs, _ = make_pairs(load_concept("honesty"))
    st = PromptSteerer()
    st.fit(model, tok, pairs)
    cal = calibrate(model, tok, st, 0.1, n_prompts=4, max_new_tokens=8)
    assert (cal.coeff_pos, cal.coeff_neg, cal.converged_pos) == (1.0, 1.0, None)
    assert cal.kl_pos > 0 and cal.kl_neg > 0 and [h["coeff"] for h in cal.history] == [1.0, -1.0]


def _grams(text, n=8):
    w = re.findall(r"\w+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_neutral_prompts_are_disjoint_from_training_and_evaluation_text():
    prompts = neutral_prompts()
    assert len(prompts) == len(set(prompts)) >= 16
    ours = set().union(*(_grams(p) for p in prompts))
    train, val = make_pairs(load_concept("honesty"))
    other = set(train.suffixes) | set(val.suffixes) | set(train.positive_prompts) | set(train.negative_prompts)
    for name in ("dd-all", "truthfulqa"):
        other |= {m["content"] for conv in load_dataset(name).rows["messages"] for m in conv}
    other |= set((DATA_DIR / "daily_dilemmas" / "dilemma.csv").read_text().splitlines())
    theirs = set().union(*(_grams(t) for t in other))
    assert ours.isdisjoint(theirs)
    assert not set(prompts) & other


def test_compare_at_kl_budgets_end_to_end(tmp_path, run_cli):
    import json

    import pandas as pd
    import yaml

    from test_sweep import TINY_CONCEPT

    concept = tmp_path / "honesty_small.yaml"
    concept.write_text(yaml.safe_dump(TINY_CONCEPT))
    root, out = tmp_path / "root", tmp_path / "out"
    common = ["compare", "--model", "tiny-llama", "--concept", str(concept), "--datasets", "dd-honesty", "--eval-limit",
              "8", "--pmass-min", "0", "--seeds", "1", "--root", str(root), "--out", str(out), "--methods", "random,prompt"]
    code, _, err = run_cli(*common, "--kl", "0.05,abc")
    assert code == 2 and "error:" in err and "'abc'" in err and not root.exists()
    assert run_cli(*common, "--kl", "0.05,0.2")[0] == 0
    info = json.loads((out / "compare.json").read_text())
    summaries = {(c["method"], c["kl"]): json.loads((root / "runs" / h / "summary.json").read_text())["dd-honesty"]
                 for h, c in info["runs"].items()}
    assert sorted(summaries) == [("prompt", 0.05), ("prompt", 0.2), ("random", 0.05), ("random", 0.2)]
    for b in (0.05, 0.2):
        s = summaries["random", b]
        assert s["kl_budget"] == b and s["kl_converged"] is True
        assert abs(s["kl_pos"] - b) <= 0.05 * b and abs(s["kl_neg"] - b) <= 0.05 * b
        p = summaries["prompt", b]  # on/off: measured at ±1, the same at every budget
        assert (p["coeff_pos"], p["coeff_neg"], p["kl_converged"]) == (1.0, 1.0, None) and p["kl_pos"] > 0
        table = pd.read_csv(out / f"table1_dd-honesty_kl{b:g}.csv").set_index("label")
        assert table.loc["random", "kl_pos"] == pytest.approx(s["kl_pos"])
        assert f"at KL {b:g} mean" in (out / f"table1_dd-honesty_kl{b:g}.md").read_text()
    assert summaries["random", 0.2]["coeff_pos"] > summaries["random", 0.05]["coeff_pos"]
    # scored in budget units: coeff ±1 is the calibrated c (raw_coeff); the calibration is stored with the fit
    h = next(h for h, c in info["runs"].items() if c["method"] == "random" and c["kl"] == 0.2)
    sc = pd.read_parquet(root / "runs" / h / "scores.parquet").drop_duplicates("coeff").set_index("coeff")["raw_coeff"]
    s = summaries["random", 0.2]
    assert sc.to_dict() == pytest.approx({-1.0: -s["coeff_neg"], 0.0: 0.0, 1.0: s["coeff_pos"]})
    assert len(list((root / "fits").glob("*/calibration/*.json"))) == 2 + 2
    # raw coefficients stay the default, and still report the KL they cost at c = ±1
    assert run_cli(*common[:-2], "--methods", "random", "--out", str(tmp_path / "raw"))[0] == 0
    raw = json.loads((tmp_path / "raw" / "compare.json").read_text())["runs"]
    (h, cfg), = raw.items()
    s = json.loads((root / "runs" / h / "summary.json").read_text())["dd-honesty"]
    assert cfg["kl"] is None and s["kl_budget"] is None and s["coeff_pos"] == 1.0 and s["kl_pos"] > 0


def test_eval_cli_at_a_kl_budget(tmp_path, tiny, run_cli):
    import json

    import pandas as pd

    from innerpissa.steerers import get_steerer

    model, tok = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    st = get_steerer("mean_diff", layers=[1])
    st.fit(model, tok, make_pairs(load_concept("honesty"))[0].subset(list(range(8))))
    st.save(tmp_path / "adapter")
    args = ["eval", "--adapter", str(tmp_path / "adapter"), "--model", str(tmp_path / "model"), "--dataset", "dd-honesty",
            "--limit", "6", "--n-boot", "20", "--concept", "honesty"]
    code, _, err = run_cli(*args, "--kl", "-1", "--out", str(tmp_path / "bad"))
    assert code == 2 and "--kl must be a positive number" in err and not (tmp_path / "bad").exists()
    code, out, err = run_cli(*args, "--kl", "0.1", "--out", str(tmp_path / "run"))
    assert code == 0, err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())["dd-honesty"]
    assert s["kl_budget"] == 0.1 and s["kl_converged"] and abs(s["kl_pos"] - 0.1) <= 0.005
    raw = pd.read_parquet(tmp_path / "run" / "scores.parquet").drop_duplicates("coeff").set_index("coeff")["raw_coeff"]
    assert raw[1.0] == pytest.approx(s["coeff_pos"]) and raw[-1.0] == pytest.approx(-s["coeff_neg"])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["calibration"]["budget"] == 0.1 and cfg["calibration"]["settings"]["direction"] == "KL(base || steered)"

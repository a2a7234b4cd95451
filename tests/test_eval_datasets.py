"""DailyDilemmas labels, TruthfulQA, the generic file format, subsets, splits and their errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from innerpissa.eval import datasets as D


@pytest.fixture(scope="module")
def dd_all() -> D.EvalSet:
    return D.load_dataset("dd-all")


@pytest.fixture(scope="module")
def official8() -> pd.DataFrame:
    acts = D.read_dd_actions(D.DD_DIR / "dilemmas_with_detail_by_action_test.csv")
    return D.dd_labels(acts, D.read_dd_values(), min_dilemmas=1)


def _lab(labels: pd.DataFrame, dim: str, rows: list[int]) -> list[float]:
    col = f"label:{dim}"
    return labels[col].iloc[rows].tolist() if col in labels else [np.nan] * len(rows)


def test_official_sample_labels_by_hand(official8: pd.DataFrame) -> None:
    lab = official8
    assert lab["rule"].tolist() == ["you"] * 8
    # idx 55: to_do "You": honesty, responsibility | not_to_do "You": avoidance of conflict, tolerance
    assert _lab(lab, "Value/honesty", [0, 1]) == [1.0, -1.0]
    assert _lab(lab, "Virtue/Truthfulness", [0, 1]) == [1.0, -1.0]  # honesty -> Truthfulness
    assert _lab(lab, "MFT/Authority", [0, 1]) == [1.0, -1.0]  # responsibility -> Authority
    assert _lab(lab, "MFT/Care", [0, 1]) == [-1.0, 1.0]  # avoidance of conflict -> Care
    assert np.isnan(_lab(lab, "MFT/Fairness", [0, 1])).all()  # honesty and tolerance both -> Fairness: dropped
    assert np.isnan(_lab(lab, "Emotion/trust", [0, 1])).all()  # honesty and tolerance both -> trust: dropped
    assert np.isnan(_lab(lab, "Value/accountability", [0, 1])).all()  # "The colleague"'s value, not the decider's
    # idx 107: to_do "You": courage | not_to_do "You": self (teamwork belongs to "Your team")
    assert _lab(lab, "Virtue/Courage", [2, 3]) == [1.0, -1.0]
    assert _lab(lab, "Value/self", [2, 3]) == [-1.0, 1.0]
    assert np.isnan(_lab(lab, "Maslow/self-esteem", [2, 3])).all()  # courage and self both -> self-esteem
    assert np.isnan(_lab(lab, "MFT/Loyalty", [2, 3])).all()  # teamwork -> Loyalty, but party "Your team"
    # idx 257: to_do "You": compassion, selflessness | not_to_do "You": self, responsibility
    assert _lab(lab, "Value/compassion", [6, 7]) == [1.0, -1.0]
    assert _lab(lab, "Value/responsibility", [6, 7]) == [-1.0, 1.0]
    assert _lab(lab, "MFT/Authority", [6, 7]) == [-1.0, 1.0]


def test_you_party_honesty_check_446() -> None:
    acts = D.read_dd_actions(D.DD_DIR / "dilemmas_with_detail_by_action.jsonl")
    lab = D.dd_labels(acts, D.read_dd_values(), rules=("you",))["label:Value/honesty"]
    assert lab.notna().sum() == 446
    assert (lab == 1).sum() == 223 and (lab == -1).sum() == 223
    # independent count straight from the raw rows
    has = [any(p.strip() == "You" and v.strip().lower() in ("honesty", "truthfulness") for p, v in zip(ps, vs))
           for ps, vs in zip(acts["parties_direct"], acts["values_direct"])]
    per_dilemma = pd.Series(has).groupby(acts["idx"]).sum()
    assert 2 * (per_dilemma == 1).sum() == 446


def test_rule_counts_and_dd_honesty_balance(dd_all: D.EvalSet) -> None:
    info = dd_all.info
    assert sum(info["rows_per_rule"].values()) == 2720 and info["rows_per_rule"]["none"] == 0
    assert info["rows_per_rule"]["you"] == 1426  # 713 dilemmas with a literal "You" party
    assert info["honesty_rows_per_rule"]["you"] == 446
    hon = D.load_dataset("dd-honesty")
    assert hon.target_dim == "Value/honesty"
    assert hon.info["n_pos"] == hon.info["n_neg"] == sum(info["honesty_rows_per_rule"].values()) // 2
    per = hon.rows.groupby("dilemma_id")["label:Value/honesty"].agg(["sum", "count"])
    assert (per["sum"] == 0).all() and (per["count"] == 2).all()  # each dilemma: one +1 and one -1 row


def test_decision_maker_rules_on_synthetic_dilemmas() -> None:
    def dilemma(idx: int, situation: str, todo: list[tuple[str, str]], nottodo: list[tuple[str, str]]) -> list[dict]:
        return [{"idx": idx, "action_type": t, "action": t, "dilemma_situation": situation, "topic_group": "x",
                 "parties_direct": [p for p, _ in pv], "values_direct": [v for _, v in pv]}
                for t, pv in (("to_do", todo), ("not_to_do", nottodo))]

    acts = pd.DataFrame(
        dilemma(1, "Sarah loves John. Should Sarah break up with John?", [("John", "honesty"), ("Sarah", "courage")],
                [("Sarah", "honesty"), ("John", "patience")])
        + dilemma(2, "You treat a patient. Do you operate?", [("You (the doctor)", "honesty")], [("The patient", "honesty")])
        + dilemma(3, "A shop sells goods. Should it close?", [("Shop owner", "honesty")], [("Customers", "honesty")])
    )
    dm = D.decision_makers(acts).set_index("idx")
    assert dm.loc[1, "rule"] == "protagonist" and dm.loc[1, "parties"] == ["sarah"]  # named first in the question
    assert dm.loc[2, "rule"] == "you-role"
    assert dm.loc[3, "rule"] == "first-party" and dm.loc[3, "parties"] == ["shop owner"]
    lab = D.dd_labels(acts, D.read_dd_values(), min_dilemmas=1)["label:Value/honesty"].tolist()
    assert lab == [-1.0, 1.0, 1.0, -1.0, 1.0, -1.0]  # Sarah's honesty is on not_to_do; John's does not count


def test_dd_prompt_format(dd_all: D.EvalSet) -> None:
    row = dd_all.rows.iloc[0]
    user, assistant = row["messages"]
    assert user["role"] == "user" and "Should you take this action?" in user["content"]
    assert '"My choice: Yes" or "My choice: No"' in user["content"] and "Action: Report the colleague" in user["content"]
    assert assistant == {"role": "assistant", "content": "My choice:"}
    assert (row["choice_pos"], row["choice_neg"], row["row_id"], row["dilemma_id"]) == ("Yes", "No", "dd-55-to_do", "55")


def test_sample_is_stratified_and_seeded() -> None:
    a, b, c = D.load_dataset("dd-sample-34", seed=0), D.load_dataset("dd-sample-34", seed=0), D.load_dataset("dd-sample-34", seed=1)
    assert a.rows["dilemma_id"].nunique() == 34 and len(a) == 68
    acts = pd.read_json(D.DD_DIR / "dilemmas_with_detail_by_action.jsonl", lines=True)
    topic = acts.drop_duplicates("idx").set_index(acts.drop_duplicates("idx")["idx"].astype(str))["topic_group"]
    assert (topic[a.rows["dilemma_id"].unique()].value_counts() == 2).all()  # 17 topics x 80 dilemmas -> 2 each
    assert a.rows["row_id"].tolist() == b.rows["row_id"].tolist()
    assert set(a.rows["row_id"]) != set(c.rows["row_id"])


def test_truthfulqa_sample_is_whole_questions_and_seeded() -> None:
    full = D.load_dataset("truthfulqa")
    a, b, c = (D.load_dataset("truthfulqa-sample-50", seed=s) for s in (0, 0, 1))
    assert a.name == "truthfulqa-sample-50" and len(a) == 100 and a.rows["dilemma_id"].nunique() == 50
    assert a.rows.groupby("dilemma_id")["label:truthfulqa/true"].sum().eq(0).all()  # both answer orders kept
    assert set(a.rows["row_id"]) <= set(full.rows["row_id"])
    assert a.rows["row_id"].tolist() == b.rows["row_id"].tolist() and set(a.rows["row_id"]) != set(c.rows["row_id"])
    for bad in ("truthfulqa-sample-0", "truthfulqa-sample-818"):
        with pytest.raises(ValueError, match="cannot sample .* TruthfulQA questions"):
            D.load_dataset(bad)


def test_split_by_dilemma_halves() -> None:
    hon = D.load_dataset("dd-honesty")
    tune, report = D.split_by_dilemma(hon, "tune"), D.split_by_dilemma(hon, "report")
    t, r = set(tune.rows["dilemma_id"]), set(report.rows["dilemma_id"])
    assert not t & r and t | r == set(hon.rows["dilemma_id"]) and abs(len(t) - len(r)) < 0.2 * len(t | r)
    # the halves agree across datasets: no dd-honesty reporting dilemma is in dd-all's tuning half
    all_tune = set(D.split_by_dilemma(D.load_dataset("dd-all"), "tune").rows["dilemma_id"])
    assert not r & all_tune and t <= all_tune
    assert tune.rows["row_id"].tolist() == D.split_by_dilemma(hon, "tune").rows["row_id"].tolist()
    assert set(D.split_by_dilemma(hon, "tune", seed=1).rows["dilemma_id"]) != t
    with pytest.raises(ValueError, match="'tune' or 'report'"):
        D.split_by_dilemma(hon, "test")  # type: ignore[arg-type]


def test_limit_rows_keeps_whole_dilemmas() -> None:
    hon = D.load_dataset("dd-honesty")
    lim = D.limit_rows(hon, 31, seed=3)
    assert len(lim) == 30 and (lim.rows.groupby("dilemma_id").size() == 2).all()
    assert lim.rows["row_id"].tolist() == D.limit_rows(hon, 31, seed=3).rows["row_id"].tolist()


def test_truthfulqa_order_balanced() -> None:
    tqa = D.load_dataset("truthfulqa")
    assert len(tqa) == 2 * 817 and tqa.target_dim == "truthfulqa/true"
    per = tqa.rows.groupby("dilemma_id")["label:truthfulqa/true"].agg(["sum", "count"])
    assert (per["sum"] == 0).all() and (per["count"] == 2).all()
    first = tqa.rows.iloc[0]
    src = pd.read_csv(D.TQA_CSV).iloc[0]
    assert first["label:truthfulqa/true"] == 1.0 and f"A) {src['Best Answer']}" in first["messages"][0]["content"]
    assert (first["choice_pos"], first["choice_neg"], first["messages"][1]["content"]) == ("A", "B", "Answer:")


def test_generic_jsonl_and_csv(tmp_path) -> None:
    rows = [{"prompt": "Is the sky green?", "label:truth": -1, "group": "g1"},
            {"prompt": "Is water wet?", "label:truth": 1, "label:style": "", "group": "g1", "choice_pos": "Sure"},
            {"prompt": "Pick one.", "label:truth": None, "label:style": 1, "prefill": "Answer:", "system": "Be brief."}]
    p = tmp_path / "mine.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    es = D.load_dataset(str(p))
    assert es.name == "mine" and es.target_dim == "truth" and es.dims == ["truth", "style"]
    assert es.rows["row_id"].tolist() == ["1", "2", "3"] and es.rows["dilemma_id"].tolist() == ["g1", "g1", "3"]
    assert es.rows["label:truth"].tolist()[:2] == [-1.0, 1.0] and np.isnan(es.rows["label:truth"].iloc[2])
    assert es.rows["choice_pos"].tolist() == ["Yes", "Sure", "Yes"] and es.rows["choice_neg"].tolist() == ["No"] * 3
    assert es.rows["messages"].iloc[2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Pick one."},
                                           {"role": "assistant", "content": "Answer:"}]
    c = tmp_path / "mine.csv"
    pd.DataFrame({"id": ["a", "b"], "prompt": ["x?", "y?"], "label:truth": [1, -1]}).to_csv(c, index=False)
    ec = D.load_dataset(str(c))
    assert ec.rows["row_id"].tolist() == ["a", "b"] and ec.rows["dilemma_id"].tolist() == ["a", "b"]


@pytest.mark.parametrize("frame, match", [
    (pd.DataFrame({"prompt": ["a", "", "c"], "label:x": [1, 1, -1]}), r"empty prompt in rows 2$"),
    (pd.DataFrame({"prompt": ["a", "b", "c"], "label:x": [1, 2, "yes"]}), r"bad values in rows 2, 3$"),
    (pd.DataFrame({"prompt": ["a", "b"]}), "no label column"),
    (pd.DataFrame({"prompt": ["a", "b"], "label:x": [None, None]}), "no \\+1/-1 labels"),
    (pd.DataFrame({"id": ["1", "1"], "prompt": ["a", "b"], "label:x": [1, -1]}), r"duplicate id in rows 1, 2$"),
    (pd.DataFrame({"prompt": ["a"], "label:x": [1], "choice_pos": ["no"]}), "choice_pos equals choice_neg in rows 1"),
    (pd.DataFrame(), "has no rows"),
])
def test_generic_malformed_rows(frame: pd.DataFrame, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.from_generic(frame, "bad")


def test_bad_jsonl_line_and_names(tmp_path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "label:x": 1}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        D.load_dataset(str(p))
    with pytest.raises(ValueError, match="unknown dataset 'dd-honest'.*dd-honesty, dd-all, dd-sample-N, truthfulqa"):
        D.load_dataset("dd-honest")
    with pytest.raises(FileNotFoundError):
        D.load_dataset(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="cannot sample 0 dilemmas"):
        D.load_dataset("dd-sample-0")
    es = D.from_generic(pd.DataFrame({"prompt": ["a"], "label:x": [1]}), "one")
    with pytest.raises(ValueError, match="is empty"):
        es.select(np.zeros(1, dtype=bool))


def test_hub_loader_fails_with_clear_message(monkeypatch) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="kellycyy/daily_dilemmas.*vendored"):
        D.load_dataset("dd-honesty", source="hub")


def test_content_hash_tracks_labels(dd_all: D.EvalSet) -> None:
    es = D.limit_rows(dd_all.select(dd_all.rows["label:Value/honesty"].notna()), 10)
    flipped = D.EvalSet(es.name, es.rows.assign(**{"label:Value/honesty": -es.rows["label:Value/honesty"]}), es.target_dim)
    again = D.limit_rows(dd_all.select(dd_all.rows["label:Value/honesty"].notna()), 10)
    assert es.content_hash() == again.content_hash() != flipped.content_hash()


def test_limit_rows_keeps_both_label_sides() -> None:
    """A small sample still holds ≥ 2 dilemmas with honesty on each action side (the side-balanced effect
    needs both), although only ~12 % of dd-honesty dilemmas put honesty on not_to_do."""
    from innerpissa.eval.datasets import limit_rows, load_dataset

    es = load_dataset("dd-honesty")
    pos = es.rows[es.rows["label:Value/honesty"] > 0]
    assert set(pos["side"]) == {"to_do", "not_to_do"} and (pos["side"] == "not_to_do").mean() < 0.2
    for seed in range(3):
        small = limit_rows(es, 12, seed=seed)
        sides = small.rows[small.rows["label:Value/honesty"] > 0].groupby("side")["dilemma_id"].nunique()
        assert len(small) <= 12 and sides.get("to_do", 0) >= 2 and sides.get("not_to_do", 0) >= 2

"""Scoring: yes/no variant discovery, batched scores vs an unbatched full-logits reference, c = 0, NaNs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from _eval_steerers import AddVector, Identity, SystemPrompt
from innerpissa.batching import chat_text, encode
from innerpissa.eval.datasets import EvalSet, from_generic, limit_rows, load_dataset
from innerpissa.eval.score import (NLL_STRIDE, SCORE_COLUMNS, answer_token_ids, describe, make_prefix_batches, nll_offsets,
                                   prompt_nll, score)
from innerpissa.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tiny_model("llama")


@pytest.fixture(scope="module")
def evalset():
    dd = limit_rows(load_dataset("dd-honesty"), 6, seed=1)
    tqa = limit_rows(load_dataset("truthfulqa"), 4, seed=1)  # A/B answers: a second answer pair in one set
    rows = pd.concat([dd.rows, tqa.rows.rename(columns={"label:truthfulqa/true": "label:Value/honesty"})], ignore_index=True)
    return EvalSet("mixed", rows, "Value/honesty")


def test_variants_on_byte_level_bpe() -> None:
    tok = tiny_tokenizer()
    vocab = tok.get_vocab()  # independent route: raw BPE pieces, "Ġ" marks a leading space
    for word in ("Yes", "No"):
        forms = {word, word.lower(), word.upper(), word.capitalize()}
        expected = sorted(vocab[p] for f in forms for p in (f, "Ġ" + f) if p in vocab)
        assert expected and answer_token_ids(tok, word) == expected


def test_variants_on_word_level_tokenizer() -> None:
    words = ["[UNK]", "Yes", "yes", "YES", "Yesterday", "No", "no", "Noon", "A", "a", "B"]
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="[UNK]")
    assert answer_token_ids(tok, "Yes") == [1, 2, 3]
    assert answer_token_ids(tok, "no") == [5, 6]
    assert answer_token_ids(tok, "A") == [8]  # single letters are case-sensitive: "a" is not the answer A


def _reference(model, tok, messages, pos: str, neg: str, stride: int = 1, offset: int = 0) -> tuple[float, float, float]:
    """Unbatched, unpadded forward with full logits: (logratio, pmass, mean prompt NLL over every
    `stride`-th target token counted back from the `offset`-th before the last one)."""
    ids = torch.tensor([tok(chat_text(tok, messages)[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = logits[-1].log_softmax(-1)
    lp = [logp[answer_token_ids(tok, w)].logsumexp(-1).item() for w in (pos, neg)]
    nll = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none").flip(0)[offset::stride].mean().item()
    return lp[0] - lp[1], float(np.exp(lp[0]) + np.exp(lp[1])), nll


@pytest.mark.parametrize("stride", sorted({1, 2, 3, NLL_STRIDE}))
def test_batched_scores_match_unbatched_reference(tiny, evalset, stride) -> None:
    model, tok = tiny
    table = score(model, tok, Identity(), evalset, [0.0], batch_size=4, pmass_min=0.0, progress=False,
                  nll_stride=stride)
    assert list(table.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS and "label:Value/honesty" in table
    for row, out in zip(evalset.rows.itertuples(), table.itertuples()):
        off = int(nll_offsets([row.row_id], stride)[0])
        lr, pm, nll = _reference(model, tok, row.messages, row.choice_pos, row.choice_neg, stride, off)
        assert out.row_id == row.row_id
        assert out.logratio == pytest.approx(lr, abs=1e-4) and out.pmass == pytest.approx(pm, rel=1e-4)
        assert out.nll == pytest.approx(nll, abs=1e-4)



def test_prefix_batches_hold_each_row_once_split_at_its_shared_prefix(tiny, evalset) -> None:
    """Cache prefix + the row's own tokens = the row's tokens; the two sides of a dilemma share most of theirs."""
    _, tok = tiny
    convs = list(evalset.rows["messages"])
    batches, lengths = make_prefix_batches(tok, convs, evalset.rows["dilemma_id"], 3, None)
    assert sorted(np.concatenate([idx for idx, _ in batches]).tolist()) == list(range(len(convs)))
    shared = []
    for idx, pb in batches:
        for j, r in enumerate(idx):
            ids = tok(chat_text(tok, convs[r])[0], add_special_tokens=False)["input_ids"]
            g = int(pb.group[j])
            pre = pb.prefix.input_ids[g][pb.prefix.attention_mask[g].bool()].tolist()
            own = pb.suffix_ids[j][pb.suffix_mask[j].bool()].tolist()
            assert pre + own == ids and len(pre) == pb.q[j] - 1 and len(own) >= 2 and lengths[r] == len(ids)
            shared.append(pb.q[j] / len(ids))
    assert max(shared) > 0.5  # dilemma sides: one prompt but the action line


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_shared_prefix_scores_equal_whole_row_scores(tiny, evalset, stride) -> None:
    """Running a dilemma's common prefix once (KV cache) changes no score: steered by a hook, by the prompt, and
    under left-truncation that breaks the common prefix (those rows run alone)."""
    model, tok = tiny
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    for steerer, coeffs, max_length in ((AddVector(v), [-1.0, 1.0], 512), (SystemPrompt(), [1.0], 512), (Identity(), [0.0], 40)):
        got = [score(model, tok, steerer, evalset, coeffs, batch_size=3, max_length=max_length, pmass_min=0.0,
                     progress=False, nll_stride=stride, share_prefix=share) for share in (True, False)]
        np.testing.assert_array_equal(got[0]["row_id"].to_numpy(), got[1]["row_id"].to_numpy())
        np.testing.assert_array_equal(got[0]["truncated"].to_numpy(), got[1]["truncated"].to_numpy())
        for col in ("logratio", "nll"):
            np.testing.assert_allclose(got[0][col].to_numpy(), got[1][col].to_numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[0]["pmass"].to_numpy(), got[1]["pmass"].to_numpy(), rtol=1e-4)
    assert got[0]["truncated"].any()

def test_prompt_nll_of_left_padded_batch_is_the_hand_subsample_mean(tiny, evalset) -> None:
    """prompt_nll at stride s = mean CE over every s-th target counted from the end of each unpadded row; s = 1 is
    the every-token mean, and a larger stride differs from it by exactly the hand-computed subsample difference."""
    model, tok = tiny
    convs = [evalset.rows["messages"].iloc[i] for i in (0, 6)]  # a dilemma and a TruthfulQA prompt: unequal lengths
    batch = encode(tok, convs)
    assert (batch.attention_mask == 0).any()  # left padding really present
    with torch.no_grad():
        final = model(**batch.model_inputs(), output_hidden_states=True).hidden_states[-1]
        got = {s: prompt_nll(model, final, batch, s) for s in (1, 2, 5)}
    for r, m in enumerate(convs):
        ids = torch.tensor([tok(chat_text(tok, m)[0], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ce = F.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="none").flip(0)
        hand = {s: ce[::s].mean().item() for s in got}
        assert got[1][r].item() == pytest.approx(ce.mean().item(), abs=1e-5)
        for s in (2, 5):
            assert got[s][r].item() == pytest.approx(hand[s], abs=1e-5)
            assert (got[s][r] - got[1][r]).item() == pytest.approx(hand[s] - hand[1], abs=1e-5)


def test_prompt_nll_offsets_partition_the_tokens(tiny, evalset) -> None:
    """Per-row offsets pick every s-th target starting k tokens before the last; over k = 0..s-1 the subsamples
    partition the row, so their count-weighted means recombine to the every-token mean (hand-computed CE)."""
    model, tok = tiny
    convs = [evalset.rows["messages"].iloc[i] for i in (0, 6)]
    batch = encode(tok, convs)
    with torch.no_grad():
        final = model(**batch.model_inputs(), output_hidden_states=True).hidden_states[-1]
        full = prompt_nll(model, final, batch, 1)
        by_k = {k: prompt_nll(model, final, batch, 3, torch.tensor([k, (k + 1) % 3])) for k in range(3)}
    for r, m in enumerate(convs):
        ids = torch.tensor([tok(chat_text(tok, m)[0], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ce = F.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="none").flip(0)
        subs = {k: ce[(k + r) % 3::3] for k in range(3)}  # row r was given offset (k + r) % 3 in by_k[k]
        for k in range(3):
            assert by_k[k][r].item() == pytest.approx(subs[k].mean().item(), abs=1e-5)
        recombined = sum(by_k[k][r].item() * len(subs[k]) for k in range(3)) / len(ce)
        assert recombined == pytest.approx(full[r].item(), abs=1e-5)


def test_nll_offsets_are_stable_and_spread() -> None:
    """Offsets are a pure function of the row id (same at every c and in every run) and cover every residue."""
    ids = [f"dd:{i}:to_do" for i in range(400)]
    off = nll_offsets(ids, 2)
    np.testing.assert_array_equal(off, nll_offsets(ids, 2))
    assert set(off.tolist()) == {0, 1} and 150 < off.sum() < 250  # about half each (binomial SD 10)
    assert set(nll_offsets(ids, 1).tolist()) == {0}


def test_c0_reproduces_unsteered_exactly_and_c_steers(tiny, evalset) -> None:
    model, tok = tiny
    before = score(model, tok, Identity(), evalset, [0.0], pmass_min=0.0, progress=False)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    steered = score(model, tok, AddVector(v), evalset, [-1.0, 0.0, 1.0], pmass_min=0.0, progress=False)
    at0 = steered[steered["coeff"] == 0.0].reset_index(drop=True)
    for col in ("logratio", "pmass", "nll"):
        np.testing.assert_array_equal(at0[col].to_numpy(), before[col].to_numpy())
    at1 = steered[steered["coeff"] == 1.0].reset_index(drop=True)
    assert (at1["logratio"] - before["logratio"]).abs().min() > 1e-4  # every row moved
    assert (at1["nll"] - before["nll"]).abs().min() > 1e-4
    after = score(model, tok, Identity(), evalset, [0.0], pmass_min=0.0, progress=False)
    np.testing.assert_array_equal(after["logratio"].to_numpy(), before["logratio"].to_numpy())  # hooks removed


def test_messages_hook_is_used(tiny, evalset) -> None:
    model, tok = tiny
    base = score(model, tok, Identity(), evalset, [1.0], pmass_min=0.0, progress=False)
    sp = score(model, tok, SystemPrompt(), evalset, [0.0, 1.0], pmass_min=0.0, progress=False)
    np.testing.assert_array_equal(sp.loc[sp["coeff"] == 0.0, "nll"].to_numpy(), base["nll"].to_numpy())
    row = evalset.rows.iloc[0]
    lr, _, nll = _reference(model, tok, SystemPrompt().messages(row["messages"], 1.0), row["choice_pos"], row["choice_neg"],
                            NLL_STRIDE, int(nll_offsets([row["row_id"]], NLL_STRIDE)[0]))
    got = sp[(sp["coeff"] == 1.0) & (sp["row_id"] == row["row_id"])].iloc[0]
    assert got["nll"] == pytest.approx(nll, abs=1e-4) and got["logratio"] == pytest.approx(lr, abs=1e-4)


def test_low_pmass_rows_are_nan_and_counted(tiny, evalset) -> None:
    model, tok = tiny
    full = score(model, tok, Identity(), evalset, [0.0], pmass_min=0.0, progress=False)
    cut = float(full["pmass"].median())
    table = score(model, tok, Identity(), evalset, [0.0], pmass_min=cut, progress=False)
    low = full["pmass"] < cut
    assert low.any() and (~low).any()
    assert table.loc[low, "logratio"].isna().all() and table.loc[~low, "logratio"].notna().all()
    np.testing.assert_array_equal(table["pmass"].to_numpy(), full["pmass"].to_numpy())  # pmass is always kept
    assert describe(table)["n_nan"] == int(low.sum())


def test_truncation_is_flagged_and_left_sided(tiny) -> None:
    model, tok = tiny
    es = from_generic(pd.DataFrame({"prompt": ["word " * 80, "short?"], "label:x": [1, -1]}), "long")
    table = score(model, tok, Identity(), es, [0.0], max_length=48, pmass_min=0.0, progress=False)
    assert table["truncated"].tolist() == [True, False]
    assert np.isfinite(table["logratio"]).all()  # the prefill at the end survives left-truncation


def test_bad_answer_words_and_coeffs(tiny) -> None:
    model, tok = tiny
    es = from_generic(pd.DataFrame({"prompt": ["q"], "label:x": [1], "choice_pos": ["Zebraquux"]}), "z")
    with pytest.raises(ValueError, match="no single-token variant of \\['Zebraquux'\\]"):
        score(model, tok, Identity(), es, [0.0], progress=False)
    ok = from_generic(pd.DataFrame({"prompt": ["q"], "label:x": [1]}), "ok")
    with pytest.raises(ValueError, match="no coefficients"):
        score(model, tok, Identity(), ok, [], progress=False)


@pytest.mark.slow
def test_smollm2_answers_the_dd_format() -> None:
    from innerpissa.models import load_model

    model, tok = load_model()
    assert [tok.decode([i]) for i in answer_token_ids(tok, "Yes")] == [" Yes", " yes", "yes", "Yes"]
    es = limit_rows(load_dataset("dd-honesty"), 4, seed=0)
    table = score(model, tok, Identity(), es, [0.0], progress=False)
    assert table["pmass"].median() > 0.5 and table["logratio"].notna().all()


class ExactAdd(AddVector):
    exact_at_zero = True


class OffAtZero(AddVector):
    """Violates c = 0 = base (shifts by v at c = 0) and does not claim exactness: must never use or fill the cache."""

    def steer(self, model, c):
        return super().steer(model, c + 1.0)


def test_base_rows_are_reused_only_for_an_exact_steerer_on_the_same_model_and_prompts(tiny, evalset, tmp_path,
                                                                                       monkeypatch) -> None:
    import innerpissa.eval.score as S

    monkeypatch.setenv("INNERPISSA_BASE_CACHE", str(tmp_path))
    model, tok = tiny
    S._BASE_ROWS.clear()
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
        ref = score(model, tok, ExactAdd(v), evalset, [0.0, 1.0], pmass_min=0.0, progress=False, reuse_base=False)
        n_two = len(calls)
        off = score(model, tok, OffAtZero(v), evalset, [0.0], pmass_min=0.0, progress=False)  # not cached
        assert not S._BASE_ROWS and len(calls) == n_two * 3 // 2
        first = score(model, tok, ExactAdd(v), evalset, [0.0, 1.0], pmass_min=0.0, progress=False)
        assert len(S._BASE_ROWS) == 1 and len(calls) == n_two * 5 // 2
        calls.clear()
        again = score(model, tok, ExactAdd(2 * v), evalset, [0.0, 1.0], pmass_min=0.0, progress=False)
        assert len(calls) == n_two // 2  # only the c = 1 forwards ran
        for col in ("logratio", "pmass", "nll", "truncated"):
            for got in (first, again):
                np.testing.assert_array_equal(got.loc[got["coeff"] == 0.0, col].to_numpy(),
                                              ref.loc[ref["coeff"] == 0.0, col].to_numpy())
        assert (off["nll"].to_numpy() != ref.loc[ref["coeff"] == 0.0, "nll"].to_numpy()).all()
        assert not np.array_equal(again.loc[again["coeff"] == 1.0, "nll"], ref.loc[ref["coeff"] == 1.0, "nll"])
        calls.clear()  # another prompt set, then another model state: computed afresh, not served from the cache
        fewer = limit_rows(evalset, 5, seed=3)
        score(model, tok, ExactAdd(v), fewer, [0.0], pmass_min=0.0, progress=False)
        assert calls and len(S._BASE_ROWS) == 2
        w = model.get_input_embeddings().weight
        saved = w.detach().clone()
        with torch.no_grad():
            w[:, 0] += 0.5
        try:
            calls.clear()
            moved = score(model, tok, ExactAdd(v), evalset, [0.0], pmass_min=0.0, progress=False)
            assert calls and len(S._BASE_ROWS) == 3
            assert not np.array_equal(moved["nll"].to_numpy(), ref.loc[ref["coeff"] == 0.0, "nll"].to_numpy())
        finally:
            with torch.no_grad():
                w.copy_(saved)
    finally:
        handle.remove()
        S._BASE_ROWS.clear()


def test_base_rows_on_disk_serve_a_new_process_and_are_invalidated_by_model_rows_or_settings(tiny, evalset, tmp_path,
                                                                                            monkeypatch) -> None:
    """The disk copy (what a later process sees: the in-memory rows cleared) gives the same c = 0 rows as a fresh
    pass without any forward; another model state, another row set or other settings are computed afresh."""
    import innerpissa.eval.score as S

    monkeypatch.setenv("INNERPISSA_BASE_CACHE", str(tmp_path))
    model, tok = tiny
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    kw = dict(pmass_min=0.0, progress=False)
    try:
        S._BASE_ROWS.clear()
        fresh = score(model, tok, ExactAdd(v), evalset, [0.0], reuse_base=False, **kw)
        assert not list(tmp_path.glob("*.npz"))  # reuse_base=False neither reads nor writes
        score(model, tok, ExactAdd(v), evalset, [0.0], **kw)
        assert len(list(tmp_path.glob("*.npz"))) == 1 and not list(tmp_path.glob(".*"))  # no temp file left
        S._BASE_ROWS.clear()  # a new process: only the disk copy is left
        calls.clear()
        disk = score(model, tok, ExactAdd(2 * v), evalset, [0.0], **kw)
        assert not calls
        for col in ("logratio", "pmass", "nll", "truncated"):
            np.testing.assert_array_equal(disk[col].to_numpy(), fresh[col].to_numpy())

        def computed(**changes) -> bool:
            S._BASE_ROWS.clear()
            calls.clear()
            score(model, tok, ExactAdd(v), changes.pop("es", evalset), [0.0], **{**kw, **changes})
            return bool(calls)

        assert computed(es=limit_rows(evalset, 5, seed=3))
        assert computed(batch_size=3) and computed(nll_stride=1) and computed(max_length=40)
        assert not computed()  # the original key is still served
        w = model.get_input_embeddings().weight
        saved = w.detach().clone()
        with torch.no_grad():
            w[:, 1] += 0.25
        try:
            assert computed()
        finally:
            with torch.no_grad():
                w.copy_(saved)
        assert len(list(tmp_path.glob("*.npz"))) == 6  # the original + five changed keys
        monkeypatch.setenv("INNERPISSA_BASE_CACHE", "off")
        assert computed()
    finally:
        handle.remove()
        S._BASE_ROWS.clear()

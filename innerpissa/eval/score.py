"""Score an EvalSet under a steerer at several coefficients: one tidy row per (coeff, question).

Per question, one batched forward with logits only at the last position (`logits_to_keep=1`):
  logratio = logsumexp(log p over every single-token variant of choice_pos) - (same for choice_neg),
             NaN when pmass = P(pos variants) + P(neg variants) < `pmass_min` (the model is not answering);
  nll      = mean next-token NLL of the prompt under the steered model (degradation), over every
             `nll_stride`-th real target token (default 2: half the LM-head and log-softmax cost; 1 = every
             token), starting at a per-row offset from the end (`nll_offsets`: a hash of the row id, the same at
             every c, so ΔNLL stays paired). A fixed offset was biased: the chat template puts the same tokens at
             the same offsets from the end, so every row skipped the same template tokens (bench/speed.py
             `stride_error`, 200 rows: mean-ΔNLL error 0.033-0.058 at stride 8 with a fixed offset, 0.005-0.007
             with the hashed one; at stride 2 both are ~0.01 at most, the subsample's noise). It reuses
             the same forward's final hidden states and applies the LM head only at those tokens, in
             chunks, so no [B, T, V] logits tensor is ever built.
Precision (`innerpissa.precision`): under bf16 the forward runs in autocast, but the answer logits are
recomputed from the final hidden state by an fp32 LM head (a bf16 logit near 20 is only good to ±0.06).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import Batch, Messages, chat_text, encode
from ..precision import autocast
from ..steerers.base import Steerer
from .datasets import LABEL, EvalSet

SCORE_COLUMNS = ["method", "seed", "coeff", "dataset", "row_id", "dilemma_id", "side", "logratio", "pmass", "nll", "truncated"]
NLL_CHUNK = 1024  # token positions per LM-head chunk when computing the prompt NLL
NLL_STRIDE = 2  # prompt NLL at every 2nd real target token (see the module docstring)


def answer_token_ids(tok: PreTrainedTokenizerBase, word: str, vocab: Sequence[str] | None = None) -> list[int]:
    """Ids of every single vocabulary token that decodes to `word` up to case and one leading space.

    Single letters ("A", "B") match case-sensitively: " a" is the article, not the answer "A"."""
    vocab = vocab if vocab is not None else decoded_vocab(tok)
    word = word.strip()
    fold = (lambda s: s.lower()) if len(word) > 1 else (lambda s: s)
    targets = {fold(word), " " + fold(word)}
    special = set(tok.all_special_ids)
    return [i for i, s in enumerate(vocab) if i not in special and fold(s) in targets]


def decoded_vocab(tok: PreTrainedTokenizerBase) -> list[str]:
    """Each token id decoded alone (index = id)."""
    return tok.batch_decode([[i] for i in range(len(tok))])


def answer_ids(tok: PreTrainedTokenizerBase, words: Sequence[str]) -> dict[str, torch.Tensor]:
    """Variant ids for each answer word; a word with no single-token variant is an error."""
    vocab = decoded_vocab(tok)
    out = {w: torch.tensor(answer_token_ids(tok, w, vocab), dtype=torch.long) for w in dict.fromkeys(words)}
    if missing := [w for w, ids in out.items() if len(ids) == 0]:
        raise ValueError(f"the tokenizer has no single-token variant of {missing}: use answer words that are one token")
    return out


def make_batches(
    tok: PreTrainedTokenizerBase, conversations: Sequence[Messages], batch_size: int, max_length: int | None
) -> tuple[list[tuple[np.ndarray, Batch]], np.ndarray]:
    """Length-sorted batches (less padding) as (row positions, left-padded Batch), and each prompt's length."""
    lengths = np.array([len(tok(chat_text(tok, m)[0], add_special_tokens=False)["input_ids"]) for m in conversations])
    order = np.argsort(lengths, kind="stable")
    batches = [(idx, encode(tok, [conversations[i] for i in idx], max_length))
               for idx in (order[s:s + batch_size] for s in range(0, len(order), batch_size))]
    return batches, lengths


def _logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def forward_scores(
    model: PreTrainedModel, batch: Batch, pos_ids: list[torch.Tensor], neg_ids: list[torch.Tensor],
    nll_stride: int = NLL_STRIDE, nll_offsets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """log p(pos), log p(neg) at the last position and the mean prompt NLL per row, from one forward."""
    b = batch.to(model.device)
    out = model(**b.model_inputs(), logits_to_keep=1, output_hidden_states=True)
    last = out.hidden_states[-1][:, -1]
    with torch.autocast(last.device.type, enabled=False):  # fp32 answer logits whatever the precision
        head = model.get_output_embeddings()
        logp = _logits(model, last.to(head.weight.dtype)).log_softmax(-1)
    lp_pos = torch.stack([logp[i, ids.to(logp.device)].logsumexp(-1) for i, ids in enumerate(pos_ids)])
    lp_neg = torch.stack([logp[i, ids.to(logp.device)].logsumexp(-1) for i, ids in enumerate(neg_ids)])
    nll = prompt_nll(model, out.hidden_states[-1], b, nll_stride, nll_offsets)
    return {"lp_pos": lp_pos.cpu(), "lp_neg": lp_neg.cpu(), "nll": nll.cpu()}


def prompt_nll(model: PreTrainedModel, final_hidden: torch.Tensor, batch: Batch, stride: int = NLL_STRIDE,
               offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token NLL per row from the final hidden states [B, T, d], over every `stride`-th real target token
    counted back from the last one, starting `offsets[r]` (in [0, stride), default 0) tokens before it (position t
    predicts t+1, both inside the attention mask); LM head in chunks."""
    hidden = final_hidden[:, :-1]
    valid = (batch.attention_mask[:, :-1] * batch.attention_mask[:, 1:]).bool()
    from_end = torch.arange(valid.shape[1] - 1, -1, -1, device=valid.device)  # left padding: rows end together
    shift = torch.zeros(len(valid), dtype=torch.long) if offsets is None else offsets.long()
    valid &= ((from_end[None, :] - shift.to(valid.device)[:, None]) % stride == 0)
    rows = valid.nonzero()[:, 0]
    h, targets = hidden[valid], batch.input_ids[:, 1:][valid]
    nll_sum = torch.zeros(len(batch), device=h.device)
    for s in range(0, len(h), NLL_CHUNK):
        ce = F.cross_entropy(_logits(model, h[s:s + NLL_CHUNK]), targets[s:s + NLL_CHUNK], reduction="none")
        nll_sum.index_add_(0, rows[s:s + NLL_CHUNK], ce)
    return nll_sum / valid.sum(1).clamp(min=1)


def nll_offsets(row_ids: Sequence[Any], stride: int) -> np.ndarray:
    """Each row's prompt-NLL start offset in [0, stride): a hash of its row id, so the same at every c and in every
    run, and spread over the offsets across rows (which is what removes the template bias of a fixed offset)."""
    return np.array([zlib.crc32(str(r).encode()) % stride for r in row_ids], dtype=np.int64)


def score(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    steerer: Steerer,
    evalset: EvalSet,
    coeffs: Sequence[float] = (-1.0, 0.0, 1.0),
    batch_size: int = 16,
    max_length: int | None = 512,
    pmass_min: float = 0.1,
    seed: int = -1,
    progress: bool = True,
    precision: str = "auto",
    nll_stride: int = NLL_STRIDE,
) -> pd.DataFrame:
    """The ScoreTable: one row per (coeff, question) with logratio, pmass, nll and every label column.

    Prompts are formatted by `steerer.messages(msgs, c)` and run inside `steerer.steer(model, c)` in
    `precision` (auto | fp32 | bf16, see `innerpissa.precision`); prompts longer than `max_length` tokens
    are left-truncated (flagged in `truncated`).
    """
    if nll_stride < 1:
        raise ValueError(f"nll_stride must be >= 1 (1 = NLL at every token), got {nll_stride}")
    if not coeffs:
        raise ValueError("no coefficients to score: pass at least one, e.g. -1 0 1")
    if not 0.0 <= pmass_min <= 1.0:
        raise ValueError(f"pmass_min must be in [0, 1], got {pmass_min}")
    rows = evalset.rows
    ids = answer_ids(tok, list(rows["choice_pos"]) + list(rows["choice_neg"]))
    overlap = {(p, n) for p, n in zip(rows["choice_pos"], rows["choice_neg"])
               if set(ids[p].tolist()) & set(ids[n].tolist())}
    if overlap:
        raise ValueError(f"answer words {sorted(overlap)[0]} share vocabulary tokens: choose two distinct answers")
    labels = [c for c in rows.columns if c.startswith(LABEL)]
    offsets = torch.from_numpy(nll_offsets(rows["row_id"], nll_stride))
    frames = []
    bar = tqdm(total=len(coeffs) * len(rows), desc=f"score {evalset.name}", unit="q", disable=not progress)
    for c in coeffs:
        convs = [steerer.messages(m, float(c)) for m in rows["messages"]]
        res = {k: np.full(len(rows), np.nan) for k in ("lp_pos", "lp_neg", "nll")}
        batches, lengths = make_batches(tok, convs, batch_size, max_length)
        truncated = lengths > max_length if max_length is not None else np.zeros(len(rows), dtype=bool)
        with steerer.steer(model, float(c)), autocast(precision, model.device):
            for idx, batch in batches:
                got = forward_scores(model, batch, [ids[w] for w in rows["choice_pos"].iloc[idx]],
                                     [ids[w] for w in rows["choice_neg"].iloc[idx]], nll_stride,
                                     offsets[idx])
                for k, v in got.items():
                    res[k][idx] = v.double().numpy()
                bar.update(len(idx))
        pmass = np.exp(res["lp_pos"]) + np.exp(res["lp_neg"])
        logratio = np.where(pmass >= pmass_min, res["lp_pos"] - res["lp_neg"], np.nan)
        frames.append(pd.DataFrame({
            "method": steerer.name, "seed": seed, "coeff": float(c), "dataset": evalset.name,
            "row_id": rows["row_id"].to_numpy(), "dilemma_id": rows["dilemma_id"].to_numpy(),
            "side": rows["side"].to_numpy() if "side" in rows else "",
            "logratio": logratio, "pmass": pmass, "nll": res["nll"], "truncated": truncated,
            **{col: rows[col].to_numpy() for col in labels},
        }))
    bar.close()
    return pd.concat(frames, ignore_index=True)


def describe(table: pd.DataFrame) -> dict[str, Any]:
    """Counts worth reporting for a ScoreTable: rows, NaN log-ratios (low pmass) and truncated prompts."""
    return {"n_scored": len(table), "n_nan": int(table["logratio"].isna().sum()),
            "n_truncated": int(table["truncated"].sum())}

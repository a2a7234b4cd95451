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
Base rows: c = 0 is the base model, bit for bit, for every steerer that sets `exact_at_zero` (all built-in ones;
each has a `torch.equal` test), so its c = 0 forwards are run once per process for a given model state, prompt set
and scoring settings and then reused (`_base_key`): a third of a 3-coefficient run's forwards, in a bench that
scores dozens of steerers on the same rows. They are also stored on disk (`base_cache_dir`, one `.npz` per key,
written atomically), so later processes, later runs of a bench and other sessions on the machine reuse them too.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import Batch, Messages, chat_text, encode
from ..models import base_cache_dir, tensors_sha256
from ..precision import autocast, resolve
from ..steerers.base import Steerer
from .datasets import LABEL, EvalSet

SCORE_COLUMNS = ["method", "seed", "coeff", "dataset", "row_id", "dilemma_id", "side", "logratio", "pmass", "nll", "truncated"]
NLL_CHUNK = 1024  # token positions per LM-head chunk when computing the prompt NLL
NLL_STRIDE = 2  # prompt NLL at every 2nd real target token (see the module docstring)
BASE_CACHE_SIZE = 8  # prompt sets whose c = 0 results are kept (a few floats per row)
_BASE_ROWS: OrderedDict[str, tuple[dict[str, np.ndarray], np.ndarray]] = OrderedDict()


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


def _answer_logprobs(model: PreTrainedModel, last: torch.Tensor, pos_ids: list[torch.Tensor],
                     neg_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(any pos variant), log P(any neg variant) per row from the final hidden state at the last position."""
    with torch.autocast(last.device.type, enabled=False):  # fp32 answer logits whatever the precision
        head = model.get_output_embeddings()
        logp = _logits(model, last.to(head.weight.dtype)).log_softmax(-1)
    lp_pos = torch.stack([logp[i, ids.to(logp.device)].logsumexp(-1) for i, ids in enumerate(pos_ids)])
    lp_neg = torch.stack([logp[i, ids.to(logp.device)].logsumexp(-1) for i, ids in enumerate(neg_ids)])
    return lp_pos, lp_neg


@torch.no_grad()
def forward_scores(
    model: PreTrainedModel, batch: Batch, pos_ids: list[torch.Tensor], neg_ids: list[torch.Tensor],
    nll_stride: int = NLL_STRIDE, nll_offsets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """log p(pos), log p(neg) at the last position and the mean prompt NLL per row, from one forward."""
    b = batch.to(model.device)
    out = model(**b.model_inputs(), logits_to_keep=1, output_hidden_states=True)
    lp_pos, lp_neg = _answer_logprobs(model, out.hidden_states[-1][:, -1], pos_ids, neg_ids)
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
    nll_sum = torch.zeros(len(batch), device=h.device).index_add_(0, rows, token_nll(model, h, targets))
    return nll_sum / valid.sum(1).clamp(min=1)


@dataclass
class PrefixBatch:
    """Rows grouped by a shared token prefix (the sides of one dilemma), for `shared_forward_scores`.

    Group g's cache holds its first q_g - 1 shared tokens (`prefix`, left-padded [G, P]); row r then runs its
    own tokens from the last shared one on (`suffix_*`, left-padded [R, S]), so every row keeps at least two
    tokens of its own: the last one for the answer logits, and the prompt NLL never needs the cache's logits."""

    prefix: Batch
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor
    suffix_pos: torch.Tensor
    group: torch.Tensor  # [R] each row's group
    ids: list[list[int]]  # each row's whole (truncated) token ids: the NLL targets
    q: list[int]  # each row's shared length q_g

    def __len__(self) -> int:
        return len(self.ids)


def _left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, T - len(s):] = 1
    return ids, mask


def _shared_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the common token prefix, capped so every row keeps two tokens of its own."""
    cap = min(len(s) for s in seqs) - 1
    q = 0
    while q < cap and all(s[q] == seqs[0][q] for s in seqs):
        q += 1
    return q


def make_prefix_batches(
    tok: PreTrainedTokenizerBase, conversations: Sequence[Messages], groups: Sequence[Any], batch_size: int,
    max_length: int | None,
) -> tuple[list[tuple[np.ndarray, PrefixBatch]], np.ndarray]:
    """Like `make_batches`, but rows with the same `groups` key that share a token prefix run it once: batches of
    whole groups (about `batch_size` rows, shortest first), and each prompt's untruncated length."""
    full = [tok(chat_text(tok, m)[0], add_special_tokens=False)["input_ids"] for m in conversations]
    lengths = np.array([len(s) for s in full])
    ids = [s[-max_length:] if max_length is not None and len(s) > max_length else s for s in full]
    if min(len(s) for s in ids) < 3:
        raise ValueError("a prompt has fewer than 3 tokens: raise max_length or give the model a real prompt")
    units: list[tuple[list[int], int]] = []  # (rows, q) per prefix group; a group with < 2 shared tokens splits up
    for rows in pd.Series(range(len(ids))).groupby(pd.Series(list(groups)), sort=False).groups.values():
        rows = [int(r) for r in rows]
        q = _shared_length([ids[r] for r in rows])
        units += [(rows, q)] if q >= 2 else [([r], len(ids[r]) - 1) for r in rows]
    units.sort(key=lambda u: max(len(ids[r]) for r in u[0]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches, chunk = [], []
    for i, unit in enumerate(units):
        chunk.append(unit)
        if sum(len(u[0]) for u in chunk) >= batch_size or i == len(units) - 1:
            rows = [r for u in chunk for r in u[0]]
            group = [g for g, u in enumerate(chunk) for _ in u[0]]
            q = [u[1] for u in chunk for _ in u[0]]
            p_ids, p_mask = _left_pad([ids[u[0][0]][: u[1] - 1] for u in chunk], pad)
            s_ids, s_mask = _left_pad([ids[r][qr - 1:] for r, qr in zip(rows, q)], pad)
            s_pos = (torch.tensor(q)[:, None] - 1 + s_mask.cumsum(-1) - 1).clamp(min=0)
            prefix = Batch(p_ids, p_mask, (p_mask.cumsum(-1) - 1).clamp(min=0), torch.zeros_like(p_mask, dtype=torch.bool))
            batches.append((np.array(rows), PrefixBatch(prefix, s_ids, s_mask, s_pos, torch.tensor(group),
                                                        [ids[r] for r in rows], q)))
            chunk = []
    return batches, lengths


def token_nll(model: PreTrainedModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token NLL of each final hidden state [N, d] against its target [N]; LM head in chunks of NLL_CHUNK."""
    return torch.cat([F.cross_entropy(_logits(model, hidden[s:s + NLL_CHUNK]), targets[s:s + NLL_CHUNK], reduction="none")
                      for s in range(0, len(hidden), NLL_CHUNK)]) if len(hidden) else hidden.new_zeros(0)


@torch.no_grad()
def shared_forward_scores(
    model: PreTrainedModel, pb: PrefixBatch, pos_ids: list[torch.Tensor], neg_ids: list[torch.Tensor],
    nll_stride: int = NLL_STRIDE, nll_offsets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`forward_scores` for a PrefixBatch: one forward of the group prefixes (kept as a KV cache), one of the rows'
    own tokens on it. Causal attention makes this exact up to float rounding; the NLL uses the same target tokens."""
    dev = model.device
    p = pb.prefix.to(dev)
    out = model(**p.model_inputs(), use_cache=True, logits_to_keep=1, output_hidden_states=True)
    cache = out.cache
    group = pb.group.to(dev)
    cache.batch_select_indices(group)  # one copy of its group's prefix cache per row
    s_out = model(input_ids=pb.suffix_ids.to(dev), attention_mask=torch.cat([p.attention_mask[group], pb.suffix_mask.to(dev)], 1),
                  position_ids=pb.suffix_pos.to(dev), cache=cache, use_cache=True, logits_to_keep=1, output_hidden_states=True)
    suffix_h, prefix_h = s_out.hidden_states[-1], out.hidden_states[-1]
    lp_pos, lp_neg = _answer_logprobs(model, suffix_h[:, -1], pos_ids, neg_ids)
    # every `nll_stride`-th target counted back from each row's last one (as `prompt_nll`); a target inside the
    # shared prefix is scored once per group, from the prefix forward
    offs = np.zeros(len(pb), dtype=np.int64) if nll_offsets is None else nll_offsets.numpy()
    P, S = prefix_h.shape[1], suffix_h.shape[1]
    shared: dict[tuple[int, int], int] = {}  # (group, t) -> entry
    src, tgt, entry_rows, entry_of = [], [], [], []  # hidden (tensor, row, col), target, and per-row entries
    for r, (ids, q) in enumerate(zip(pb.ids, pb.q)):
        g, L = int(pb.group[r]), len(ids)
        for t in range(L - 2, -1, -1):
            if (L - 2 - t - offs[r]) % nll_stride:
                continue
            if t <= q - 2:  # position t of the shared prefix (cache holds tokens 0 .. q-2)
                key = (g, t)
                if key not in shared:
                    shared[key] = len(src)
                    src.append((0, g, P - (q - 1) + t))
                    tgt.append(ids[t + 1])
                entry_of.append(shared[key])
            else:  # the row's own tokens start at position q - 1
                entry_of.append(len(src))
                src.append((1, r, S - (L - q + 1) + (t - q + 1)))
                tgt.append(ids[t + 1])
            entry_rows.append(r)
    sel = np.array(src, dtype=np.int64).reshape(-1, 3)
    h = torch.empty((len(sel), prefix_h.shape[-1]), dtype=prefix_h.dtype, device=dev)
    for which, hid in ((0, prefix_h), (1, suffix_h)):
        m = torch.from_numpy(sel[:, 0] == which)
        h[m.to(dev)] = hid[torch.from_numpy(sel[m.numpy(), 1]).to(dev), torch.from_numpy(sel[m.numpy(), 2]).to(dev)]
    ce = token_nll(model, h, torch.tensor(tgt, dtype=torch.long, device=dev))
    rows = torch.tensor(entry_rows, dtype=torch.long, device=dev)
    nll_sum = torch.zeros(len(pb), device=dev, dtype=ce.dtype).index_add_(0, rows, ce[torch.tensor(entry_of, device=dev)])
    nll = nll_sum / torch.bincount(rows, minlength=len(pb)).clamp(min=1)
    return {"lp_pos": lp_pos.cpu(), "lp_neg": lp_neg.cpu(), "nll": nll.cpu()}


def nll_offsets(row_ids: Sequence[Any], stride: int) -> np.ndarray:
    """Each row's prompt-NLL start offset in [0, stride): a hash of its row id, so the same at every c and in every
    run, and spread over the offsets across rows (which is what removes the template bias of a fixed offset)."""
    return np.array([zlib.crc32(str(r).encode()) % stride for r in row_ids], dtype=np.int64)


def _load_base(key: str) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """The c = 0 results stored under `key`: this process's, else the disk copy (then kept in memory too)."""
    if key in _BASE_ROWS:
        _BASE_ROWS.move_to_end(key)
        return _BASE_ROWS[key]
    folder = base_cache_dir()
    path = folder / f"{key}.npz" if folder is not None else None
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        hit = ({k: z[k].copy() for k in ("lp_pos", "lp_neg", "nll")}, z["lengths"].copy())
    _keep_base(key, *hit)
    return hit


def _keep_base(key: str, res: dict[str, np.ndarray], lengths: np.ndarray) -> None:
    _BASE_ROWS[key] = ({k: v.copy() for k, v in res.items()}, lengths)
    while len(_BASE_ROWS) > BASE_CACHE_SIZE:
        _BASE_ROWS.popitem(last=False)


def _store_base(key: str, res: dict[str, np.ndarray], lengths: np.ndarray) -> None:
    """Keep the c = 0 results in memory and write them to the disk cache atomically (never a half-written file)."""
    _keep_base(key, res, lengths)
    folder = base_cache_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, lengths=lengths, **res)
        os.replace(tmp, folder / f"{key}.npz")
    finally:
        tmp.unlink(missing_ok=True)


def _base_key(model: PreTrainedModel, tok: PreTrainedTokenizerBase, convs: list[Messages], rows: pd.DataFrame,
              grouped: bool, batch_size: int, max_length: int | None, precision: str, nll_stride: int) -> str:
    """Everything a c = 0 result depends on: the model's whole state (adapters attached included), the tokenizer
    and its chat template, the exact prompts, answers, row ids and dilemma groups (batching, NLL offsets), and the
    settings. Two calls with the same key run the same forwards on the same batches."""
    h = hashlib.sha256(tensors_sha256(sorted(model.state_dict().items())).encode())
    h.update(Path(__file__).read_bytes())  # this scoring code: an edit never reuses rows the old code computed
    h.update(json.dumps([str(model.device), tok.name_or_path, len(tok), tok.chat_template, convs,
                         list(rows["choice_pos"]), list(rows["choice_neg"]), [str(r) for r in rows["row_id"]],
                         [str(g) for g in rows["dilemma_id"]] if grouped else None, batch_size, max_length,
                         resolve(precision, model.device), nll_stride], default=str).encode())
    return h.hexdigest()


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
    share_prefix: bool = True,
    reuse_base: bool = True,
) -> pd.DataFrame:
    """The ScoreTable: one row per (coeff, question) with logratio, pmass, nll and every label column.

    Prompts are formatted by `steerer.messages(msgs, c)` and run inside `steerer.steer(model, c)` in
    `precision` (auto | fp32 | bf16, see `innerpissa.precision`); prompts longer than `max_length` tokens
    are left-truncated (flagged in `truncated`). `share_prefix`: the rows of one dilemma run their common
    token prefix once (`shared_forward_scores`: the same numbers up to float rounding, ~0.6x the tokens on
    DailyDilemmas); False runs every row whole. `reuse_base`: c = 0 of an `exact_at_zero` steerer comes from this
    process's (or, from the disk cache, any process's) earlier identical base forwards (see the module docstring).
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
    grouped = share_prefix and "dilemma_id" in rows and rows["dilemma_id"].duplicated().any()
    frames = []
    bar = tqdm(total=len(coeffs) * len(rows), desc=f"score {evalset.name}", unit="q", disable=not progress)
    for c in coeffs:
        convs = [steerer.messages(m, float(c)) for m in rows["messages"]]
        key = (_base_key(model, tok, convs, rows, grouped, batch_size, max_length, precision, nll_stride)
               if c == 0 and reuse_base and getattr(steerer, "exact_at_zero", False) else None)
        hit = _load_base(key) if key is not None else None
        if hit is not None:
            res, lengths = {k: v.copy() for k, v in hit[0].items()}, hit[1]
            bar.update(len(rows))
        else:
            res = {k: np.full(len(rows), np.nan) for k in ("lp_pos", "lp_neg", "nll")}
            if grouped:
                batches, lengths = make_prefix_batches(tok, convs, rows["dilemma_id"], batch_size, max_length)
            else:
                batches, lengths = make_batches(tok, convs, batch_size, max_length)
            forward = shared_forward_scores if grouped else forward_scores
            with steerer.steer(model, float(c)), autocast(precision, model.device):
                for idx, batch in batches:
                    got = forward(model, batch, [ids[w] for w in rows["choice_pos"].iloc[idx]],
                                  [ids[w] for w in rows["choice_neg"].iloc[idx]], nll_stride, offsets[idx])
                    for k, v in got.items():
                        res[k][idx] = v.double().numpy()
                    bar.update(len(idx))
            if key is not None:
                _store_base(key, res, lengths)
        truncated = lengths > max_length if max_length is not None else np.zeros(len(rows), dtype=bool)
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

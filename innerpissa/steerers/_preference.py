"""Preference data from persona pairs for the output-level rivals `bipo` and `dpo_lora`, whose DPO objective
(`objectives.dpo`) is trained by `loop.Loop`, the loop every trainable method shares: checkpoints and resume included.

Preference data (BiPO/DPO style, built from our contrastive pairs): for pair i the frozen base model greedily
continues the shared suffix for `gen_tokens` tokens once under the positive persona (→ y_w) and once under the
negative persona (→ y_l). The context x is the pair's *neutral* prompt (the template without a persona, see
`concepts.pairs`) with the suffix opening the assistant turn. So "+c prefers the positive persona's
continuation" means π_c(y_w | x) / π₀(y_w | x) > π_c(y_l | x) / π₀(y_l | x) with no persona in x: the steering
has to supply it. Pairs whose two continuations are equal carry no preference and are dropped.

Log-probs are summed over the continuation tokens only (the suffix is shared context), as in DPO.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ContextManager

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import chat_text, encode, sorted_chunks, unsort
from ..concepts import ContrastPairs
from ..config import TrainConfig, validation_message
from ..objectives.dpo import PreferenceData, seq_logps


class PreferenceConfig(BaseModel):
    """DPO settings shared by bipo and dpo_lora (AdamW at a constant rate, `steps` random batches)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(0.1, gt=0, description="DPO inverse temperature (BiPO and DPO papers: 0.1)")
    lr: float = Field(1e-3, gt=0)
    steps: int = Field(24, gt=0, description="optimizer steps")
    batch_size: int = Field(8, gt=0, description="preference pairs per step")
    gen_tokens: int = Field(16, gt=0, description="length of the generated persona continuations y_w, y_l")
    max_length: int = Field(128, gt=8, description="token cap of the prompt part (left-truncated)")
    gen_batch_size: int = Field(32, gt=0, description="rows per generation/reference batch")
    seed: int = 0


def preference_config(method: str, **values: Any) -> PreferenceConfig:
    """A validated PreferenceConfig; a bad value raises one ValueError line naming it."""
    try:
        return PreferenceConfig(**values)
    except ValidationError as e:
        raise ValueError(f"bad hyper-parameters for method {method!r}: {validation_message(e)}") from None


def _continuations(model: PreTrainedModel, tok: PreTrainedTokenizerBase, convs: list[list[dict[str, str]]],
                   cfg: PreferenceConfig, progress: bool) -> list[list[int]]:
    """Greedy `gen_tokens`-token continuations of each conversation's final assistant message, cut at the first
    special token (end of turn)."""
    batch = encode(tok, convs, cfg.max_length).to(next(model.parameters()).device)
    order, chunks = sorted_chunks(batch, cfg.gen_batch_size)
    special = set(tok.all_special_ids)
    outs = []
    for b in tqdm(chunks, desc="preference data: generating", leave=False, disable=not progress):
        gen = model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=cfg.gen_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        outs.append(gen[:, b.input_ids.shape[1]:].cpu())
    width = max(o.shape[1] for o in outs)
    new = unsort(order.cpu(), torch.cat([nn.functional.pad(o, (0, width - o.shape[1]), value=-1) for o in outs]))
    cut = []
    for row in new.tolist():
        ids = [t for t in row if t >= 0]
        end = next((i for i, t in enumerate(ids) if t in special), len(ids))
        cut.append(ids[:end])
    return cut


def preference_data(model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: ContrastPairs,
                    cfg: PreferenceConfig, progress: bool = True) -> PreferenceData:
    """Generate y_w / y_l under the two personas with the frozen model, pair them with the neutral context x, and
    score them under the base model (the DPO reference)."""
    if not pairs.neutral_prompts:
        raise ValueError("these pairs carry no neutral prompts (output-level methods need them): build them with "
                         "concepts.make_pairs")
    n = len(pairs)
    convs = [pairs.messages(i, True) for i in range(n)] + [pairs.messages(i, False) for i in range(n)]
    with torch.no_grad():
        ys = _continuations(model, tok, convs, cfg, progress)
    keep = [i for i in range(n) if ys[i] != ys[n + i] and ys[i] and ys[n + i]]
    if not keep:
        raise ValueError(f"all {n} pairs give equal (or empty) continuations under both personas: no preference to learn")
    xs = []
    for i in keep:  # the positive side's conversation with its persona prompt replaced by the neutral one
        msgs = [{**m, "content": pairs.neutral_prompts[i] if m["content"] == pairs.positive_prompts[i] else m["content"]}
                for m in pairs.messages(i, True)]
        text, _ = chat_text(tok, msgs)
        xs.append(tok(text, add_special_tokens=False)["input_ids"][-cfg.max_length:])
    seqs = [(xs[j], ys[i]) for j, i in enumerate(keep)] + [(xs[j], ys[n + i]) for j, i in enumerate(keep)]
    T = max(len(x) + len(y) for x, y in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    target = torch.zeros((len(seqs), T))
    for r, (x, y) in enumerate(seqs):
        input_ids[r, T - len(x) - len(y):] = torch.tensor(x + y)
        attn[r, T - len(x) - len(y):] = 1
        target[r, T - len(y):] = 1.0
    data = PreferenceData(input_ids, attn, target, torch.zeros(len(seqs)), cfg.gen_tokens)
    with torch.no_grad():
        data.ref_logp = torch.cat([seq_logps(model, data, torch.arange(s, min(s + cfg.gen_batch_size, len(seqs))))
                                   for s in range(0, len(seqs), cfg.gen_batch_size)]).cpu()
    return data


def reward_margins(model: PreTrainedModel, data: PreferenceData, steer: Callable[[float], ContextManager[None]],
                   c: float, batch_size: int) -> torch.Tensor:
    """Implicit DPO reward margins [n] at coefficient c: (logπ_c − logπ₀)(y_w) − (logπ_c − logπ₀)(y_l)."""
    out = []
    with torch.no_grad(), steer(c):
        for s in range(0, len(data), batch_size):
            idx = torch.arange(s, min(s + batch_size, len(data)))
            rows = data.rows(idx)
            delta = seq_logps(model, data, rows).cpu() - data.ref_logp[rows]
            out.append(delta[: len(idx)] - delta[len(idx):])
    return torch.cat(out)


def loop_config(cfg: PreferenceConfig) -> TrainConfig:
    """The shared loop's settings for a DPO-style fit: AdamW (no weight decay) at a constant rate, no clipping."""
    return TrainConfig(lr=cfg.lr, weight_decay=0.0, schedule="constant", steps=cfg.steps, grad_accum=1)


def fit_record(model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: ContrastPairs, val: ContrastPairs | None,
               data: PreferenceData, history: list[dict], steer: Callable[[float], ContextManager[None]],
               cfg: PreferenceConfig, progress: bool = True) -> dict[str, Any]:
    """What a DPO-style fit reports (train.json): pairs used/dropped, the loss log and, with validation pairs,
    the mean reward margin at c = ±1 (data generated at c = 0, i.e. by the base model)."""
    out: dict[str, Any] = {"n_pairs": len(data), "n_dropped": len(pairs) - len(data), "history": history}
    if val is not None and len(val):
        vdata = preference_data(model, tok, val, cfg, progress)
        out["val_margin"] = {f"{c:+g}": float(reward_margins(model, vdata, steer, c, cfg.gen_batch_size).mean())
                             for c in (-1.0, 1.0)}
    return out

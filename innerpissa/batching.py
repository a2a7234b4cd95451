"""Tokenize chat messages (left-padded, with a completion mask) and read hidden states from a batch.

Left padding puts every sequence's last token at position -1, so "the last N tokens" is a slice.
We pass explicit position ids (cumsum of the mask) so padding never shifts positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .capture import capture
from .concepts import ContrastPairs

Messages = list[dict[str, str]]


@dataclass
class Batch:
    """Token tensors [B, T]; `completion_mask` marks the assistant-message tokens (the suffix)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.completion_mask)))

    def __getitem__(self, idx: slice | torch.Tensor) -> "Batch":
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.position_ids[idx], self.completion_mask[idx])

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def chat_text(tok: PreTrainedTokenizerBase, messages: Messages) -> tuple[str, int]:
    """Render messages; if the last is the assistant's, continue it (no end-of-turn).

    Returns (text, prompt_chars): the character offset where the assistant content starts (or len).
    """
    if messages[-1]["role"] == "assistant":
        text = tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        prefix = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        if not text.startswith(prefix):  # templates that reformat earlier turns: fall back to the content
            return text, len(text) - len(messages[-1]["content"])
        return text, len(prefix)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, len(text)


def encode(
    tok: PreTrainedTokenizerBase, conversations: Sequence[Messages], max_length: int | None = None
) -> Batch:
    """Tokenize conversations left-padded; left-truncate to `max_length` tokens if given."""
    texts, starts = zip(*(chat_text(tok, m) for m in conversations))
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    rows = []
    for ids, offs, start in zip(enc["input_ids"], enc["offset_mapping"], starts):
        comp = [int(o[0] >= start and o[1] > o[0]) for o in offs]
        if max_length is not None and len(ids) > max_length:
            ids, comp = ids[-max_length:], comp[-max_length:]
        rows.append((ids, comp))
    T = max(len(ids) for ids, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    B = len(rows)
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    comp_mask = torch.zeros((B, T), dtype=torch.bool)
    for i, (ids, comp) in enumerate(rows):
        n = len(ids)
        input_ids[i, T - n:] = torch.tensor(ids)
        attn[i, T - n:] = 1
        comp_mask[i, T - n:] = torch.tensor(comp, dtype=torch.bool)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attn, pos, comp_mask)


def encode_pairs(tok: PreTrainedTokenizerBase, pairs: ContrastPairs, max_length: int | None = None) -> Batch:
    """Encode all pairs as one batch: rows [0, n) positive, [n, 2n) negative (same padding length)."""
    n = len(pairs)
    convs = [pairs.messages(i, True) for i in range(n)] + [pairs.messages(i, False) for i in range(n)]
    return encode(tok, convs, max_length)


@torch.no_grad()
def last_token_hidden(
    model: PreTrainedModel, batch: Batch, layers: Sequence[int], last_n: int = 1, batch_size: int = 32
) -> dict[int, torch.Tensor]:
    """Residual-stream output of each decoder layer in `layers` at the last `last_n` tokens: {l: [B, last_n, d]}.

    Read with hooks on the layers themselves (the stream steering adds to; for the last layer that is before
    the final norm, unlike `output_hidden_states[-1]`)."""
    from .models import decoder_layers

    blocks = decoder_layers(model)
    out: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    with capture({l: blocks[l] for l in layers}, last_n) as store:
        for s in range(0, len(batch), batch_size):
            model(**batch[s: s + batch_size].model_inputs(), logits_to_keep=1)
            for l in layers:
                out[l].append(store[l].float())
    return {l: torch.cat(v) for l, v in out.items()}


def sorted_chunks(batch: Batch, batch_size: int) -> tuple[torch.Tensor, list[Batch]]:
    """Rows grouped by length into chunks with their leading pad columns cut (inputs are left-padded), so
    fitting does not run the model on padding; returns (row order, chunks): chunk rows are batch[order]."""
    lengths = batch.attention_mask.sum(1)
    order = lengths.argsort(stable=True)
    chunks = []
    for s in range(0, len(batch), batch_size):
        b = batch[order[s: s + batch_size]]
        start = b.input_ids.shape[1] - int(lengths[order[s: s + batch_size]].max())
        chunks.append(Batch(*(t[:, start:] for t in (b.input_ids, b.attention_mask, b.position_ids, b.completion_mask))))
    return order, chunks


def unsort(order: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Undo `sorted_chunks`' ordering: rows[i] belongs to batch row order[i]."""
    out = torch.empty_like(rows)
    out[order] = rows
    return out

"""Greedy steered generation at several coefficients (side-by-side samples for humans)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batching import encode
from .precision import autocast
from .steerers.base import Steerer


@torch.no_grad()
def generate_table(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    steerer: Steerer,
    prompts: Sequence[str],
    coeffs: Sequence[float] = (-1.0, 0.0, 1.0),
    max_new_tokens: int = 48,
    precision: str = "auto",
) -> pd.DataFrame:
    """Greedy completions of each user prompt at each coefficient (in `precision`, see innerpissa.precision):
    DataFrame[prompt, coeff, completion]. A progress bar counts the coefficients (one batch of every prompt each)."""
    rows = []
    for c in tqdm(coeffs, desc=f"generating {len(prompts)} prompt(s) x {max_new_tokens} tokens", unit="c"):
        convs = [steerer.messages([{"role": "user", "content": p}], c) for p in prompts]
        b = encode(tok, convs).to(model.device)
        with steerer.steer(model, c), autocast(precision, model.device):
            out = model.generate(
                input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=tok.pad_token_id,
            )
        for p, seq in zip(prompts, out[:, b.input_ids.shape[1]:]):
            rows.append({"prompt": p, "coeff": float(c), "completion": tok.decode(seq, skip_special_tokens=True).strip()})
    return pd.DataFrame(rows)

"""`pissa` baseline: see peft_lora.py (same ReprPO loss; c scales the adapter's weight change)."""

from .peft_lora import PeftSteerer


class PissaSteerer(PeftSteerer):
    name = "pissa"
    variant = "pissa"
    rank = 8


STEERER = PissaSteerer

"""`dora` baseline: see peft_lora.py (same ReprPO loss; c scales the adapter's weight change)."""

from .peft_lora import PeftSteerer


class DoraSteerer(PeftSteerer):
    name = "dora"
    variant = "dora"
    rank = 7


STEERER = DoraSteerer

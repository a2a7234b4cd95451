"""`lora` baseline: see peft_lora.py (same ReprPO loss; c scales the adapter's weight change)."""

from .peft_lora import PeftSteerer


class LoraSteerer(PeftSteerer):
    name = "lora"
    variant = "lora"


STEERER = LoraSteerer

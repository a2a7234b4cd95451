"""innerpissa: reversible steering adapters (InnerPiSSA) trained with ReprPO, and an honest evaluator."""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
__version__ = "0.1.0"

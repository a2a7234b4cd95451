"""Concept specs (YAML) -> contrastive persona pairs; see `pairs.py`."""

from .pairs import ConceptSpec, ContrastPairs, ConceptError, builtin_concepts, load_concept, make_pairs

__all__ = ["ConceptSpec", "ContrastPairs", "ConceptError", "builtin_concepts", "load_concept", "make_pairs"]

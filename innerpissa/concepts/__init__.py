"""Concept specs (YAML) -> contrastive persona pairs; see `pairs.py`."""

from .pairs import (ConceptError, ConceptSpec, ContrastPairs, builtin_concepts, concept_from_words, load_concept,
                    make_pairs, with_article)

__all__ = ["ConceptSpec", "ContrastPairs", "ConceptError", "builtin_concepts", "concept_from_words", "load_concept",
           "make_pairs", "with_article"]

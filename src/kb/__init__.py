"""Tooling for the model-compression knowledge base: registry, BibTeX, reproductions, site."""

__version__ = "0.1.0"

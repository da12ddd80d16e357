"""Bilevel optimisers (architects), chosen by name from ``STRATEGIES``."""

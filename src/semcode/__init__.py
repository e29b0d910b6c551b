"""semcode: natural-language-to-code search models, trained end to end."""

__version__ = "0.1.0"

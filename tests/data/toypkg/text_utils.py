"""Text helpers."""

import re


def slugify(title):
    """Turn a title into a lowercase url slug."""
    words = re.findall(r"[a-z0-9]+", title.lower())
    slug = "-".join(words)
    return slug


def word_count(text):
    """Count the words in a text string."""
    words = text.split()
    return len(words)


def shout(text):
    """Upper-case the text and add an exclamation mark."""
    loud = text.upper()
    return loud + "!"

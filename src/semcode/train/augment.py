"""Training-pair augmentations that bring docstring-style pairs closer to how people search.

Ingest gives (docstring, code without its docstring) pairs. Users (and CoSQA) search with short
web-style queries ("python check if a variable is iterable") over code that often keeps its docstring.
Two seeded, train-split-only rewrites narrow that gap:

- ``web_style_query``: the docstring's first sentence, markup removed, lower case, the leading
  third-person verb made imperative ("Returns" -> "return" or "get"), articles sometimes dropped, at most
  ``MAX_WEB_QUERY_WORDS`` words, and "python" sometimes put before or after, as search queries read.
- ``code_with_docstring``: the docstring put back as the function's first body line.

Both are pure functions of their inputs and a numpy Generator, so a resumed run sees the same pairs.
"""

from __future__ import annotations

import ast
import re
import textwrap

import numpy as np

MAX_WEB_QUERY_WORDS = 12
ARTICLES = frozenset({"a", "an", "the"})
# First words that end in "s" but are not third-person verbs ("Is this ...", "Process ...").
NOT_THIRD_PERSON = frozenset({"is", "has", "does", "was", "this", "its", "as", "process", "access", "focus"})

_RST_ROLE = re.compile(r":[a-z]+:`([^`]*)`")  # :rfc:`5892` -> 5892, :class:`Foo` -> Foo
_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)])[.!?](\s|$)")
_SECTION = re.compile(
    r"\s(:param|:return|:rtype|:raises|args:|returns:|parameters\b|#\s*noqa)", re.IGNORECASE
)
_NOT_WORD = re.compile(r"[^\w\s'.\-/]")


def imperative(verb: str) -> str:
    """'returns' -> 'return', 'applies' -> 'apply', 'fetches' -> 'fetch'; other words unchanged."""
    if verb in NOT_THIRD_PERSON or len(verb) <= 3 or not verb.endswith("s") or verb.endswith(("ss", "us")):
        return verb
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("sses", "shes", "ches", "xes", "zes")):
        return verb[:-2]
    return verb[:-1]


def web_style_query(docstring: str, rng: np.random.Generator) -> str:
    """A short lower-case search query made from a docstring; the docstring itself if nothing is left."""
    text = _RST_ROLE.sub(r"\1", docstring).replace("``", "").replace("`", "")
    text = _SECTION.split(text, maxsplit=1)[0]
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    words = _NOT_WORD.sub(" ", text.lower()).split()
    words = [w.strip(".'-/") for w in words]
    words = [w for w in words if w]
    if not words:
        return docstring
    words[0] = imperative(words[0])
    if (
        words[0] == "return" and rng.random() < 0.5
    ):  # people search "get the x", docstrings say "Return the x"
        words[0] = "get"
    if rng.random() < 0.5:
        words = [w for w in words if w not in ARTICLES] or words
    words = words[:MAX_WEB_QUERY_WORDS]
    where = rng.random()
    if where < 0.45 and words[0] != "python":
        words = ["python", *words]
    elif where < 0.75 and words[-1] != "python":
        words = [*words, "python"]
    return " ".join(words)


def code_with_docstring(code: str, docstring: str) -> str | None:
    """``code`` with ``\"\"\"docstring\"\"\"`` as its first body line; None for what is not a multi-line def."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError:
        return None
    function = tree.body[0] if tree.body else None
    if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) or not function.body:
        return None
    if function.body[0].lineno == function.lineno:  # def f(): return x
        return None
    lines = code.split("\n")
    first = function.body[0].lineno - 1  # dedent keeps line numbers
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    text = docstring.replace("\\", "\\\\").replace('"""', "'''")
    return "\n".join([*lines[:first], f'{indent}"""{text}"""', *lines[first:]])


def augment_pairs(
    queries: list[str], codes: list[str], web_query_share: float, docstring_share: float, seed: int
) -> tuple[list[str], list[str], dict[str, int]]:
    """Rewrite a seeded ``web_query_share`` of the queries and ``docstring_share`` of the codes.

    The two draws are independent. A code gets its pair's original docstring (never the rewritten
    query), so a web-style query next to it is a paraphrase, not a copy. Returns the new lists and
    how many of each were changed.
    """
    for name, share in (("web_query_share", web_query_share), ("docstring_share", docstring_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if len(queries) != len(codes):
        raise ValueError(f"queries and codes differ in length: {len(queries)} vs {len(codes)}")
    rng = np.random.default_rng([seed, 7])  # its own stream: the data order uses [seed, epoch]
    new_queries, new_codes = list(queries), list(codes)
    counts = {"web_style_queries": 0, "codes_with_docstring": 0}
    for i, (query, code) in enumerate(zip(queries, codes, strict=True)):
        if rng.random() < docstring_share and (with_doc := code_with_docstring(code, query)) is not None:
            new_codes[i] = with_doc
            counts["codes_with_docstring"] += 1
        if rng.random() < web_query_share:
            new_queries[i] = web_style_query(query, rng)
            counts["web_style_queries"] += 1
    return new_queries, new_codes, counts

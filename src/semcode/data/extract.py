"""Extract (docstring, function) pairs from Python source, following CodeSearchNet's rules.

What is extracted, from one file:

- module-level functions and the methods of module-level classes, ``async`` ones included
  (nested functions and nested classes are left out, as in CodeSearchNet);
- ``func_name`` is ``name`` or ``Class.name``; line numbers are 1-based and include decorators.

The rules (CodeSearchNet's, with the reasons recorded by :data:`REJECT_REASONS`):

- a file whose path (relative to its repository or package root) is a test path is skipped;
- a function whose name is a test name, a dunder method or a constructor (``__init__``,
  ``__new__``, ... every ``__name__``) is skipped;
- a function with fewer than ``min_code_lines`` non-blank lines, counted from the ``def`` line
  with the docstring removed (decorators do not count), is skipped; so is one longer than
  ``max_code_chars``, and one whose body is only its docstring (an interface stub: nothing to find);
- the query is the docstring's first paragraph; a pair needs at least ``min_docstring_tokens``
  word tokens in it (the function still goes to the corpus without a pair).

"Test" is matched per word, not as a raw substring: paths and names are split into words on
``_ - . /`` and camelCase, and a word that starts with ``test`` (``test``, ``tests``, ``testing``,
``TestCase``) or is ``conftest`` marks a test. CodeSearchNet's raw substring rule would also throw
away ``latest``, ``greatest``, ``unittest`` and ``pytest``, which are not tests.

The code kept for a function (the ``code`` column, the same for pairs and corpus):

- the original source text from the first decorator line to the function's last line; decorators
  are kept because they carry meaning (``@property``, ``@app.route("/users")``, ``@staticmethod``);
- the docstring statement is removed using the ast positions (with blank lines right after it), so
  the encoder never sees the answer to its query inside the code;
- methods are dedented by their own indentation so every function starts at column 0 and parses
  on its own; relative indentation, comments and formatting are otherwise untouched.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import tokenize
from collections import Counter
from dataclasses import dataclass

# Reasons a function is skipped by the rules (not errors: the source is fine, the function is not wanted).
REJECT_REASONS = ("test_name", "dunder", "too_short", "too_long", "empty_body")

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")
_WORD_TOKEN = re.compile(r"\w+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Function:
    """One extracted function: its code without docstring, and the query made from the docstring."""

    func_name: str  # "name" or "Class.name"
    code: str  # source from the first decorator to the end, docstring removed, dedented
    docstring: str  # the cleaned full docstring, "" when there is none
    query: str  # the docstring's first paragraph on one line, "" when there is none
    start_line: int  # 1-based, the first decorator's line
    end_line: int  # 1-based, inclusive


def _words(text: str) -> list[str]:
    """Lower-case words of a path or identifier, split on punctuation and camelCase."""
    words: list[str] = []
    for chunk in _WORD_SPLIT.split(text):
        words.extend(w.lower() for w in _CAMEL.findall(chunk))
    return words


def _has_test_word(text: str) -> bool:
    return any(word.startswith("test") or word == "conftest" for word in _words(text))


def is_test_path(path: str) -> bool:
    """True for a file that belongs to tests (``tests/x.py``, ``test_x.py``, ``idle_test/...``)."""
    return _has_test_word(path)


def is_test_name(name: str) -> bool:
    return _has_test_word(name)


def is_dunder(name: str) -> bool:
    """Dunder methods and constructors (``__init__``, ``__new__``, ``__repr__``, ...)."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def first_paragraph(docstring: str) -> str:
    """The docstring's first paragraph on one line (whitespace collapsed)."""
    cleaned = inspect.cleandoc(docstring).strip()
    if not cleaned:
        return ""
    return " ".join(_PARAGRAPH_BREAK.split(cleaned, maxsplit=1)[0].split())


def count_tokens(text: str) -> int:
    """Word tokens (``\\w+``) in a query: what ``min_docstring_tokens`` counts."""
    return len(_WORD_TOKEN.findall(text))


def count_code_lines(code: str) -> int:
    """Non-blank lines from the ``def`` line on (decorator lines are not counted)."""
    lines = [line for line in code.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if not line.lstrip().startswith("@"):
            return len(lines) - index
    return 0


def _docstring_node(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr):
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return body[0]
    return None


def source_lines(text: str) -> list[str]:
    """Lines with their endings, split only where Python's tokenizer splits (``\\n``, ``\\r\\n``,
    ``\\r``): ``str.splitlines`` also splits on form feeds and other separators, and would shift ast's
    line numbers in files that contain them."""
    return io.StringIO(text, newline="").readlines()


def _byte_slice(line: str, start: int, end: int | None = None) -> str:
    """Slice a line by UTF-8 byte offsets, the unit of ast's column offsets."""
    return line.encode("utf-8")[start:end].decode("utf-8", errors="replace")


def function_source(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, int, int]:
    """The function's source (decorators included, docstring removed, dedented) and its line span.

    ``lines`` is the file's text split by :func:`source_lines`; line endings become ``\\n``.
    Returns ``(code, start, end)``; ``code`` is ``""`` when nothing but the docstring is in the body.
    """
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = node.end_lineno or node.lineno
    span = list(lines[start - 1 : end])
    doc = _docstring_node(node)
    if doc is not None:
        if len(node.body) == 1:
            return "", start, end
        first, last = doc.lineno - start, (doc.end_lineno or doc.lineno) - start
        before = _byte_slice(span[first], 0, doc.col_offset)
        after = _byte_slice(span[last], doc.end_col_offset or 0).lstrip()
        if after.startswith(";"):  # `"""doc"""; x = 1` keeps `x = 1`
            after = after[1:].lstrip()
        after = after.rstrip() + "\n" if after.strip() else ""
        if before.strip() and after:  # `def f(): "doc"; return 1` -> `def f(): return 1`
            rest = [before.rstrip() + " " + after]
        elif after:  # `    "doc"; x = 1` -> `    x = 1`
            rest = [before + after]
        elif before.strip():  # never seen: keep whatever precedes the docstring on its line
            rest = [before.rstrip() + "\n"]
        else:  # the usual case: the docstring has its own lines
            rest = []
        tail = span[last + 1 :]
        if not rest:
            while tail and not tail[0].strip():  # drop the blank lines that followed the docstring
                tail = tail[1:]
        span = span[:first] + rest + tail
    indent = span[0][: len(span[0]) - len(span[0].lstrip(" \t"))]
    if indent:
        span = [line[len(indent) :] if line.startswith(indent) else line for line in span]
    code = "".join(span).replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"
    return code, start, end


def _candidates(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level functions and methods of module-level classes, in source order."""
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    found.append((f"{node.name}.{item.name}", item))
    return found


def extract_functions(
    source: str,
    *,
    min_code_lines: int = 3,
    max_code_chars: int = 0,
) -> tuple[list[Function], Counter[str]]:
    """All wanted functions of one Python file, and counts of the skipped ones by reason.

    Raises ``SyntaxError`` (or ``ValueError`` for null bytes) when the source does not parse; the
    caller counts that file as rejected. ``max_code_chars`` of 0 means no limit.
    """
    tree = ast.parse(source)
    lines = source_lines(source)
    functions: list[Function] = []
    rejects: Counter[str] = Counter()
    for func_name, node in _candidates(tree):
        reason = check_name(node.name)
        if reason:
            rejects[reason] += 1
            continue
        code, start, end = function_source(lines, node)
        reason = check_code(code, min_code_lines=min_code_lines, max_code_chars=max_code_chars)
        if reason:
            rejects[reason] += 1
            continue
        docstring = ast.get_docstring(node, clean=True) or ""
        functions.append(Function(func_name, code, docstring, first_paragraph(docstring), start, end))
    return functions, rejects


def check_name(name: str) -> str | None:
    """The rule a function name breaks (``test_name``/``dunder``), or None."""
    if is_dunder(name):
        return "dunder"
    if is_test_name(name):
        return "test_name"
    return None


def check_code(code: str, *, min_code_lines: int, max_code_chars: int) -> str | None:
    """The rule a function's code (docstring removed) breaks, or None."""
    if not code.strip():
        return "empty_body"
    if count_code_lines(code) < min_code_lines:
        return "too_short"
    if max_code_chars and len(code) > max_code_chars:
        return "too_long"
    return None


# --------------------------------------------------------------------------------------------
# One function given as text (CodeSearchNet rows, HumanEval): remove its docstring.


def _first_function(
    tree: ast.Module, name: str | None = None
) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The function called ``name`` (anywhere in the tree), else the first function."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    named = [n for n in functions if n.name == name]
    return (named or functions or [None])[0]


def _strip_with_tokenize(code: str) -> tuple[str, str] | None:
    """Fallback for code ast cannot parse (Python 2): the first string statement after the header."""
    lines = source_lines(code)
    depth, seen_def, after_colon = 0, False, False
    try:
        for token in tokenize.generate_tokens(iter(lines).__next__):
            if not seen_def:
                seen_def = token.type == tokenize.NAME and token.string == "def"
                continue
            if not after_colon:
                if token.type == tokenize.OP and token.string in "([{":
                    depth += 1
                elif token.type == tokenize.OP and token.string in ")]}":
                    depth -= 1
                elif token.type == tokenize.OP and token.string == ":" and depth == 0:
                    after_colon = True
                continue
            if token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.COMMENT):
                continue
            if token.type != tokenize.STRING:
                return None
            (row0, col0), (row1, col1) = token.start, token.end
            before, after = lines[row0 - 1][:col0], lines[row1 - 1][col1:]
            if before.strip() or after.strip():
                return None  # shares its lines with code: leave it
            try:
                docstring = inspect.cleandoc(ast.literal_eval(token.string))
            except (ValueError, SyntaxError):
                docstring = token.string.strip("'\"rRuUbB")
            return "".join(lines[: row0 - 1] + lines[row1:]), docstring
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return None


def strip_text(code: str, docstring: str) -> str:
    """Last resort: cut the docstring text and its quotes out of the code where they occur."""
    text = docstring.strip()
    if not text:
        return code
    at = code.find(text)
    if at < 0:
        first_line = text.splitlines()[0].strip()
        at = code.find(first_line) if first_line else -1
        if at < 0:
            return code
        text = first_line
    open_at = max(code.rfind('"""', 0, at), code.rfind("'''", 0, at))
    if open_at < 0:
        return code
    quote = code[open_at : open_at + 3]
    close_at = code.find(quote, at)
    if close_at < 0:
        return code
    line_start = code.rfind("\n", 0, open_at) + 1
    line_end = code.find("\n", close_at + 3)
    line_end = len(code) if line_end < 0 else line_end + 1
    if code[line_start:open_at].strip(" \trRuUbB") or code[close_at + 3 : line_end].strip():
        return code[:open_at] + code[close_at + 3 :]
    return code[:line_start] + code[line_end:]


def strip_docstring(code: str, docstring: str = "", name: str | None = None) -> tuple[str, str]:
    """Remove the docstring from one function given as text; returns ``(code, docstring)``.

    Tries ast positions first (the same :func:`function_source` as for files; indented methods are
    dedented first), then the tokenizer (for Python 2 code), then the known ``docstring`` text.
    The returned docstring is the one found in the code, else the ``docstring`` passed in.
    """
    for candidate in (code, textwrap.dedent(code)):
        try:
            tree = ast.parse(candidate)
        except (SyntaxError, ValueError):
            continue
        node = _first_function(tree, name)
        if node is None:
            break
        found = ast.get_docstring(node, clean=True) or ""
        stripped, _, _ = function_source(source_lines(candidate), node)
        return stripped, found or docstring
    tokenized = _strip_with_tokenize(code)
    if tokenized is not None:
        return tokenized[0].rstrip() + "\n", tokenized[1] or docstring
    return strip_text(code, docstring).rstrip() + "\n", docstring

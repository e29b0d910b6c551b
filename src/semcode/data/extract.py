"""Extract (doc comment, function) pairs from source files in ten languages, following CodeSearchNet.

One extractor for every language: tree-sitter parses the file, and the table in
:mod:`semcode.data.languages` says which nodes are functions, which give a method its ``Type.``
prefix and where the doc comment sits. What is extracted, from one file:

- functions and methods (Python: module-level functions and the methods of module-level classes,
  ``async`` ones included; nested functions are left out everywhere, as in CodeSearchNet);
- ``func_name`` is ``name`` or ``Type.name``: the class (Java, JS/TS, PHP, Ruby, C++, Python),
  the Go receiver type, the Rust ``impl`` type, the C++ ``Type::`` qualifier;
- line numbers are 1-based and include decorators (and attributes, ``export``, ``template``);
- ``signature`` is the header up to the body on one line (``async def get(self, url: str) -> bytes:``,
  ``func (p *Point) Scale(f float64)``), decorators and doc comment left out: what a search result shows.

The rules (CodeSearchNet's, with the reasons recorded by :data:`REJECT_REASONS`):

- a file whose path (relative to its repository or package root) is a test path is skipped;
- a function whose name is a test name, a dunder method or a constructor (``__init__``,
  ``constructor``, ``initialize``, ``__construct``) is skipped (``dunder``); so is one marked as a
  test (JUnit ``@Test``, Rust ``#[test]``, a function inside a module named ``tests``: ``test_name``);
- a function with fewer than ``min_code_lines`` non-blank lines, counted from the ``def`` line
  with the docstring removed (decorators do not count), is skipped; so is one longer than
  ``max_code_chars``, and one whose body is only its docstring or that has no body (an interface
  stub: nothing to find);
- the query is the doc comment's first paragraph, markers (``///``, ``/** */``, `` * ``, ``#``)
  and tags (``@param``, ``:param``, ``@return``, ``{@link X}`` -> ``X``, HTML tags) removed, on one
  line; a pair needs at least ``min_docstring_tokens`` word tokens in it (the function still goes to
  the corpus without a pair).

"Test" is matched per word, not as a raw substring: paths and names are split into words on
``_ - . /`` and camelCase, and a word that starts with ``test`` (``test``, ``tests``, ``testing``,
``TestCase``) or is ``conftest`` marks a test. CodeSearchNet's raw substring rule would also throw
away ``latest``, ``greatest``, ``unittest`` and ``pytest``, which are not tests.

A file that does not parse raises ``SyntaxError``: tree-sitter recovers from errors, so a file
counts as not parsing when its tree has errors and no function outside them could be found;
functions outside the errors of a partly broken file are kept, functions containing one are not.

The code kept for a function (the ``code`` column, the same for pairs and corpus):

- the original source text from the first decorator line to the function's last line (trailing
  comments after its last statement are not part of it); decorators are kept because they carry
  meaning (``@property``, ``@app.route("/users")``, ``@Override``);
- the doc comment is removed (it sits before the function in every language but Python; Python's
  docstring statement is cut out with the blank lines right after it), so the encoder never sees
  the answer to its query inside the code;
- methods are dedented by their own indentation so every function starts at column 0;
  relative indentation, comments and formatting are otherwise untouched.
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

import tree_sitter

from semcode.data.languages import RULES, LanguageRules, parser_for

# Reasons a function is skipped by the rules (not errors: the source is fine, the function is not wanted).
REJECT_REASONS = ("test_name", "dunder", "too_short", "too_long", "empty_body")

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")
_WORD_TOKEN = re.compile(r"\w+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A line that starts the tags section of a doc comment: the summary is over.
_TAG_LINE = re.compile(
    r"^\s*(@[A-Za-z]|:(param|parameter|arg|argument|key|keyword|type|return|returns|rtype|raise|raises"
    r"|except|exception|throws|ivar|cvar|var)\b)"
)
_INLINE_TAG = re.compile(r"\{@\w+\s*([^}]*)\}")  # {@link Foo#bar} -> Foo#bar, {@code x} -> x
_HTML_PARAGRAPH = re.compile(r"<p\s*/?>", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?/?>")
_LEADING_STAR = re.compile(r"^\s*\*+ ?")
_GO_DIRECTIVE = re.compile(r"^(go:|\+build |line |nolint)")
_TEST_ATTRIBUTE = re.compile(r"\btest\b")
_TYPE_ARGUMENTS = re.compile(r"[<\[].*$", re.DOTALL)
_BRACKET_SPACE = re.compile(r"([(\[]) | ([)\]])")
_NOT_A_HEADER = ("@", "#", "//", "/*", "*")  # decorators, attributes, comments: skipped before a header
MAX_HEADER_LINES = 20
_DECLARATOR_NAMES = (
    "identifier",
    "field_identifier",
    "qualified_identifier",
    "destructor_name",
    "operator_name",
)

# Generated and vendored files (matched on the path relative to the repository root).
# Python packages keep theirs under `_vendor/` (pip, setuptools, torch), `vendored/` (botocore) or
# `externals/` (joblib, scikit-learn): about 5,700 definitions of this machine's site-packages, copies of
# other packages that crowd the real ones out of search results.
VENDORED_DIRS = ("vendor", "_vendor", "vendored", "_vendored", "externals", "node_modules", "third_party")
_GENERATED_NAME = re.compile(r"(\.min\.js|_pb2\.py|_pb2_grpc\.py|\.pb\.go)$|\.generated\.")
_GENERATED_MARK = re.compile(r"Code generated\b.*\bDO NOT EDIT")
GENERATED_MARK_LINES = 10  # "Code generated ... DO NOT EDIT" counts in the first lines only


@dataclass(frozen=True)
class Function:
    """One extracted function: its code without doc comment, and the query made from the comment."""

    func_name: str  # "name" or "Type.name"
    code: str  # source from the first decorator to the end, doc comment removed, dedented
    docstring: str  # the cleaned full doc comment, "" when there is none
    query: str  # the doc comment's first paragraph on one line, "" when there is none
    start_line: int  # 1-based, the first decorator's line
    end_line: int  # 1-based, inclusive
    language: str = "python"
    signature: str = ""  # the header up to the body, on one line: "def f(x):", "func F(x int) error"
    # The pair rule it breaks (test_name, dunder, too_short, too_long) when extracted with index_all, or
    # "class" (a class outline): still a definition a user searches for, an index row, never a pair.
    pair_reject: str = ""


def _words(text: str) -> list[str]:
    """Lower-case words of a path or identifier, split on punctuation and camelCase."""
    words: list[str] = []
    for chunk in _WORD_SPLIT.split(text):
        words.extend(w.lower() for w in _CAMEL.findall(chunk))
    return words


def _has_test_word(text: str, extra_words: tuple[str, ...] = ()) -> bool:
    return any(word.startswith("test") or word == "conftest" or word in extra_words for word in _words(text))


def is_test_path(path: str, extra_words: tuple[str, ...] = ()) -> bool:
    """True for a file that belongs to tests (``tests/x.py``, ``test_x.py``, ``x_test.go``, ``idle_test/...``).

    ``extra_words`` adds a language's own test words (``spec`` for Ruby and JavaScript).
    """
    return _has_test_word(path, extra_words)


def is_test_name(name: str) -> bool:
    return _has_test_word(name)


def is_dunder(name: str) -> bool:
    """Dunder methods and constructors (``__init__``, ``__new__``, ``__repr__``, ...)."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def is_vendored_path(path: str) -> bool:
    """A file under one of VENDORED_DIRS (``vendor/``, ``pip/_vendor/``, ``node_modules/``, ...): someone
    else's code, copied in."""
    return any(part in VENDORED_DIRS for part in path.split("/")[:-1])


def is_generated_path(path: str) -> bool:
    """A generated file by its name: ``*.min.js``, ``*_pb2.py``, ``*.pb.go``, ``*.generated.*``."""
    return bool(_GENERATED_NAME.search(path.rsplit("/", 1)[-1]))


def is_generated_source(text: str) -> bool:
    """A file whose first lines say ``Code generated ... DO NOT EDIT`` (the Go convention, used widely)."""
    head = text[:4096].splitlines()[:GENERATED_MARK_LINES]
    return any(_GENERATED_MARK.search(line) for line in head)


def first_paragraph(docstring: str) -> str:
    """The docstring's first paragraph on one line (whitespace collapsed)."""
    cleaned = inspect.cleandoc(docstring).strip()
    if not cleaned:
        return ""
    return " ".join(_PARAGRAPH_BREAK.split(cleaned, maxsplit=1)[0].split())


def doc_query(docstring: str, *, markup: bool = False) -> str:
    """The query of a doc comment: its first paragraph up to the first tag line, on one line.

    ``markup`` (Javadoc, JSDoc, PHPDoc, ...) also unwraps inline tags (``{@link Foo}`` -> ``Foo``),
    ends the paragraph at ``<p>`` and drops HTML tags.
    """
    text = docstring
    if markup:
        text = _INLINE_TAG.sub(r"\1", text)
        text = _HTML_PARAGRAPH.split(text, maxsplit=1)[0]
        text = _HTML_TAG.sub("", text)
    kept: list[str] = []
    for line in inspect.cleandoc(text).strip().splitlines():
        # a Python docstring may well begin with "@decorator ..."; a doc comment's tags never summarise
        is_tag = _TAG_LINE.match(line) and (markup or kept)
        if not line.strip() or is_tag:
            break
        kept.append(line)
    return " ".join(" ".join(kept).split())


def comment_text(comment: str) -> str | None:
    """The text of one comment without its markers (``/** * */``, ``///``, ``//``, ``#``).

    None for a Go directive (``//go:generate``, ``//nolint``): not documentation.
    """
    text = comment.strip()
    if text.startswith("/*"):
        body = text[2:].removesuffix("*/").lstrip("*!")
        return "\n".join(_LEADING_STAR.sub("", line) for line in body.splitlines())
    if text.startswith("//") and _GO_DIRECTIVE.match(text[2:]):
        return None
    marker = next((m for m in ("///", "//!", "//", "#") if text.startswith(m)), "")
    text = text[len(marker) :]
    return text[1:] if text.startswith(" ") else text


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


def source_lines(text: str) -> list[str]:
    """Lines with their endings, split only where Python's tokenizer splits (``\\n``, ``\\r\\n``,
    ``\\r``): ``str.splitlines`` also splits on form feeds and other separators, and would shift ast's
    line numbers in files that contain them."""
    return io.StringIO(text, newline="").readlines()


def _byte_slice(line: str, start: int, end: int | None = None) -> str:
    """Slice a line by UTF-8 byte offsets, the unit of ast's and tree-sitter's column offsets."""
    return line.encode("utf-8")[start:end].decode("utf-8", errors="replace")


# (first line, first column, last line, last column): 1-based lines, UTF-8 byte columns, end exclusive
Span = tuple[int, int, int, int]


def cut_span(lines: list[str], start: int, end: int, docstring: Span | None) -> str:
    """Lines ``start..end`` (1-based, inclusive) with the ``docstring`` statement cut out, dedented.

    ``lines`` is the file's text split by :func:`source_lines`; line endings become ``\\n``. The blank
    lines right after a docstring that has its own lines go with it.
    """
    span = list(lines[start - 1 : end])
    if docstring is not None:
        first_line, first_col, last_line, last_col = docstring
        first, last = first_line - start, last_line - start
        before = _byte_slice(span[first], 0, first_col)
        after = _byte_slice(span[last], last_col).lstrip()
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
    return "".join(span).replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"


def _docstring_node(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr):
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return body[0]
    return None


def function_source(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, int, int]:
    """An ast function's source (decorators included, docstring removed, dedented) and its line span.

    Used for single functions given as text (:func:`strip_docstring`); files go through tree-sitter.
    Returns ``(code, start, end)``; ``code`` is ``""`` when nothing but the docstring is in the body.
    """
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = node.end_lineno or node.lineno
    doc = _docstring_node(node)
    if doc is not None and len(node.body) == 1:
        return "", start, end
    span = None
    if doc is not None:
        span = (doc.lineno, doc.col_offset, doc.end_lineno or doc.lineno, doc.end_col_offset or 0)
    return cut_span(lines, start, end, span), start, end


# --------------------------------------------------------------------------------------------
# Files: tree-sitter


@dataclass(frozen=True)
class _Candidate:
    """A function node found in the tree, with what surrounds it."""

    node: tree_sitter.Node  # the function itself
    outer: tree_sitter.Node  # the outermost node that belongs to it (decorated_definition, export, template)
    container: str  # the class/impl/receiver name for "Type.name", or ""
    in_test_module: bool  # inside a module/namespace named like a test (Rust `mod tests`)
    assigned_name: str = ""  # `const name = () => {}`, `obj.name = function () {}`: the name on the left


def _text(node: tree_sitter.Node | None) -> str:
    return node.text.decode("utf-8", errors="replace") if node is not None and node.text else ""


def _short_type(text: str) -> str:
    """``Point<T>`` / ``*Point`` / ``geo::Point`` / ``Geo::Point`` -> ``Point``."""
    text = _TYPE_ARGUMENTS.sub("", text).replace("::", ".").strip(" *&")
    return text.rsplit(".", 1)[-1]


def _unwrap(node: tree_sitter.Node, rules: LanguageRules) -> tuple[tree_sitter.Node, tree_sitter.Node]:
    """``(inner, outer)``: the function or class inside decorators/export/template, and the wrapper."""
    inner = node
    wanted = rules.function_types + rules.container_types + rules.wrapper_types
    while inner.type in rules.wrapper_types:
        parts = [child for child in inner.named_children if child.type in wanted]
        if not parts:
            break
        inner = parts[-1]
    return inner, node


def _container_name(node: tree_sitter.Node) -> str:
    named = node.child_by_field_name("type") if node.type == "impl_item" else node.child_by_field_name("name")
    return _short_type(_text(named))


def _find_functions(
    node: tree_sitter.Node,
    rules: LanguageRules,
    container: str = "",
    in_container: bool = False,
    in_test_module: bool = False,
    found: list[_Candidate] | None = None,
) -> list[_Candidate]:
    """Functions in source order; never looks inside a function (nested functions are left out)."""
    found = [] if found is None else found
    for child in node.named_children:
        inner, outer = _unwrap(child, rules)
        if inner.type in rules.function_types:
            found.append(_Candidate(inner, outer, container, in_test_module))
        elif inner.type in rules.container_types:
            if in_container and not rules.nested_containers:
                continue
            name = _container_name(inner) or container
            _find_functions(inner, rules, name, True, in_test_module, found)
        elif inner.type in rules.assignment_statements:
            found.extend(_assigned_functions(inner, outer, rules, container, in_test_module))
        elif inner.type in rules.search_types:
            named = _text(inner.child_by_field_name("name"))
            test_module = in_test_module or bool(named and is_test_name(named))
            _find_functions(inner, rules, container, in_container, test_module, found)
    return found


def _assigned_functions(
    statement: tree_sitter.Node, outer: tree_sitter.Node, rules: LanguageRules, container: str, in_test: bool
) -> list[_Candidate]:
    """Functions given a name by a declaration or an assignment (JavaScript, TypeScript).

    ``res.send = function send() {}`` is ``res.send``; ``Foo.prototype.bar = ...`` is ``Foo.bar``;
    ``module.exports.h = ...`` and ``exports.h = ...`` are ``h``.
    """
    found = []
    for part in statement.named_children:
        target, value = part.child_by_field_name("name"), part.child_by_field_name("value")
        if part.type == "assignment_expression":
            target, value = part.child_by_field_name("left"), part.child_by_field_name("right")
        if target is None or value is None or value.type not in rules.function_values:
            continue
        names = [n for n in _text(target).split(".") if n not in ("prototype", "module", "exports", "this")]
        if not names:
            continue
        name = ".".join(names[-2:]) if len(names) > 1 else names[0]
        found.append(_Candidate(value, outer, container, in_test, assigned_name=name))
    return found


def _function_name(candidate: _Candidate, rules: LanguageRules) -> tuple[str, str]:
    """``(short name, func_name)``: ``scale`` and ``Point.scale``."""
    node = candidate.node
    if candidate.assigned_name:
        short = candidate.assigned_name.rsplit(".", 1)[-1]
        if "." in candidate.assigned_name or not candidate.container:
            return short, candidate.assigned_name
        return short, f"{candidate.container}.{short}"
    if rules.name in ("c", "cpp"):
        declarator = node.child_by_field_name("declarator")
        while declarator is not None and declarator.type not in _DECLARATOR_NAMES:
            inner = declarator.child_by_field_name("declarator")
            if inner is None:  # reference_declarator (C++ `T& f()`) has no field for its inner declarator
                inner = next((c for c in declarator.named_children if "declarator" in c.type), None)
            declarator = inner
        parts = _TYPE_ARGUMENTS.sub("", _text(declarator)).split("::")
        if len(parts) > 1:  # `Polygon::perimeter` defined outside its class
            return parts[-1], f"{parts[-2]}.{parts[-1]}"
        short = parts[-1]
    else:
        short = _text(node.child_by_field_name("name"))
    container = candidate.container
    receiver = node.child_by_field_name("receiver")  # Go: func (p *Point) Scale(...)
    if receiver is not None:
        parameter = next((c for c in receiver.named_children if c.type == "parameter_declaration"), None)
        container = _short_type(_text(parameter.child_by_field_name("type"))) if parameter else ""
    return short, f"{container}.{short}" if container else short


def _prefix_nodes(node: tree_sitter.Node, rules: LanguageRules) -> list[tree_sitter.Node]:
    """Decorators/attributes right before a function that belong to it, in source order."""
    prefix = []
    previous = node.prev_named_sibling
    while previous is not None and previous.type in rules.prefix_types:
        prefix.insert(0, previous)
        previous = previous.prev_named_sibling
    return prefix


def _marked_as_test(candidate: _Candidate, prefix: list[tree_sitter.Node]) -> bool:
    """JUnit ``@Test`` (and ``@ParameterizedTest``...), Rust ``#[test]``/``#[tokio::test]``."""
    if candidate.in_test_module:
        return True
    for child in candidate.node.children:
        if child.type == "modifiers":
            for annotation in child.named_children:
                name = _text(annotation.child_by_field_name("name"))
                if annotation.type in ("marker_annotation", "annotation") and name.endswith("Test"):
                    return True
    return any(node.type == "attribute_item" and _TEST_ATTRIBUTE.search(_text(node)) for node in prefix)


def _last_row(node: tree_sitter.Node) -> int:
    """The last row a node's text is on (a Rust line comment ends at column 0 of the next row)."""
    row, column = node.end_point
    return row - 1 if column == 0 and row > node.start_point.row else row


def _code_end(node: tree_sitter.Node, comment_types: tuple[str, ...]) -> tree_sitter.Node:
    """The last token of a node, trailing comments not counted (tree-sitter puts the comments after a
    Python function's last statement inside its block; ast, and readers, do not)."""
    while node.child_count:
        children = node.children
        index = len(children) - 1
        while index >= 0 and children[index].type in comment_types:
            index -= 1
        if index < 0:
            break
        node = children[index]
    return node


def _previous(node: tree_sitter.Node) -> tree_sitter.Node | None:
    """The node right before ``node`` in the source, climbing out of parents it starts (Ruby puts the
    comment before a class's first method in the class node, before the body the method starts)."""
    while node.prev_sibling is None and node.parent is not None and node.parent.start_byte == node.start_byte:
        node = node.parent
    return node.prev_sibling


def _starts_line(node: tree_sitter.Node, source: bytes) -> bool:
    line_start = source.rfind(b"\n", 0, node.start_byte) + 1
    return not source[line_start : node.start_byte].strip()


def _is_doc_comment(text: str, rules: LanguageRules) -> bool:
    for prefix in rules.doc_prefixes:
        if not prefix:
            return True
        # `////` and `/***` are banners, `/**/` is empty: not doc comments
        if text.startswith(prefix) and not text.startswith(prefix + prefix[-1]) and text != "/**/":
            return True
    return False


def _doc_comment(first: tree_sitter.Node, rules: LanguageRules, source: bytes) -> str:
    """The cleaned doc comment right before ``first`` (a function, or its first decorator/attribute)."""
    block: list[tree_sitter.Node] = []
    node = first
    while True:
        previous = _previous(node)
        if previous is None or previous.type not in rules.comment_types:
            break
        text = _text(previous)
        # A blank line ends a run of comments (the one above belongs to something else), except after
        # a `/** */` doc block: JSDoc styles (express, ...) leave a blank line before the function.
        gap = _last_row(previous) < node.start_point.row - 1
        if (gap and not (text.startswith("/**") and not block)) or not _starts_line(previous, source):
            break
        is_block = text.startswith("/*")
        if is_block and block:  # a block comment does not join a run of line comments
            break
        block.insert(0, previous)
        node = previous
        if is_block:
            break
    texts = [comment_text(_text(c)) for c in block if _is_doc_comment(_text(c), rules)]
    return inspect.cleandoc("\n".join(text for text in texts if text is not None)).strip()


def _python_docstring(node: tree_sitter.Node) -> tuple[str, tree_sitter.Node | None, int]:
    """``(docstring, its string node, statements in the body)`` of a Python function, as ast sees it."""
    body = node.child_by_field_name("body")
    statements = [c for c in body.named_children if c.type != "comment"] if body is not None else []
    if not statements or statements[0].type != "expression_statement":
        return "", None, len(statements)
    (value, *others) = statements[0].named_children or [None]
    if others or value is None or value.type not in ("string", "concatenated_string"):
        return "", None, len(statements)
    try:
        literal = ast.literal_eval(_text(value))
    except (ValueError, SyntaxError, MemoryError, RecursionError):  # f-strings are not docstrings
        return "", None, len(statements)
    if not isinstance(literal, str):  # b"..." is not a docstring either
        return "", None, len(statements)
    return inspect.cleandoc(literal), value, len(statements)


def one_line(text: str) -> str:
    """``text`` on one line: whitespace runs collapsed, none just inside brackets (``f(\n  a,\n)`` -> ``f(a,)``)."""
    return _BRACKET_SPACE.sub(lambda m: m.group(1) or m.group(2), " ".join(text.split()))


def _signature(candidate: _Candidate, source: bytes) -> str:
    """The function's header on one line: from ``def``/``func``/its modifiers (decorators and doc comment
    left out; for ``const f = () => {}`` from ``const``) to where its body starts."""
    node = candidate.node
    start = candidate.outer.start_byte if candidate.assigned_name else node.start_byte
    body = node.child_by_field_name("body")
    if body is None:  # no body field: the first line
        text = source[start : node.end_byte].decode("utf-8", errors="replace").split("\n", 1)[0]
    else:
        text = source[start : body.start_byte].decode("utf-8", errors="replace")
    return one_line(text)


def text_signature(code: str) -> str:
    """The header of one function given as text (CodeSearchNet rows, HumanEval), on one line: its first
    line that is not a decorator, attribute or comment, and the lines after it while a bracket it opened is
    open; a trailing ``{`` is cut. "" for empty code."""
    kept: list[str] = []
    depth = 0
    for line in code.splitlines():
        text = line.strip()
        if not kept and (not text or text.startswith(_NOT_A_HEADER)):
            continue
        kept.append(text)
        depth += sum(text.count(c) for c in "([") - sum(text.count(c) for c in ")]")
        if depth <= 0 or len(kept) >= MAX_HEADER_LINES:
            break
    return one_line(" ".join(kept)).removesuffix("{").rstrip()


def _code_lines(source: bytes, outer: tree_sitter.Node, end: tree_sitter.Node) -> str:
    """Source from ``outer``'s line to ``end``, dedented by the first line's indentation."""
    line_start = source.rfind(b"\n", 0, outer.start_byte) + 1
    indent = source[line_start : outer.start_byte]
    begin = line_start if not indent.strip() else outer.start_byte
    text = source[begin : end.end_byte].decode("utf-8", errors="replace")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    prefix = indent.decode("utf-8", errors="replace") if not indent.strip() else ""
    if prefix:
        lines = [line[len(prefix) :] if line.startswith(prefix) else line for line in lines]
    return "\n".join(lines).rstrip() + "\n"


def extract_functions(
    source: str,
    *,
    language: str = "python",
    path: str = "",
    min_code_lines: int = 3,
    max_code_chars: int = 0,
    index_all: bool = False,
) -> tuple[list[Function], Counter[str]]:
    """All wanted functions of one file, and counts of the skipped ones by reason.

    ``path`` only picks a grammar variant (``.tsx``). Raises ``SyntaxError`` when the source does not
    parse (see the module docstring); the caller counts that file as rejected. ``max_code_chars`` of
    0 means no limit. ``index_all``: a function that breaks a name or size rule is returned anyway, with
    the rule in ``pair_reject`` (and still counted in the rejects): the index wants every definition,
    one line or a thousand, dunders and test-named helpers included; only an empty body is dropped.
    """
    rules = RULES[language]
    data = source.encode("utf-8", errors="surrogatepass")
    root = parser_for(language, path).parse(data).root_node
    candidates = [c for c in _find_functions(root, rules) if not c.outer.has_error]
    if root.has_error and not candidates:
        raise SyntaxError(f"{path or language} does not parse: tree-sitter found errors and no function")
    lines = source_lines(source) if rules.doc == "docstring" else []
    functions: list[Function] = []
    rejects: Counter[str] = Counter()
    for candidate in candidates:
        short, func_name = _function_name(candidate, rules)
        prefix = _prefix_nodes(candidate.outer, rules)
        reason = check_name(short) or ("dunder" if short in rules.constructor_names else None)
        if reason is None and _marked_as_test(candidate, prefix):
            reason = "test_name"
        if reason:
            rejects[reason] += 1
            if not index_all:
                continue
        pair_reject = reason or ""
        first = prefix[0] if prefix else candidate.outer
        end = _code_end(candidate.node, rules.comment_types)
        start_line, end_line = first.start_point.row + 1, _last_row(end) + 1
        if rules.doc == "docstring":
            docstring, string, statements = _python_docstring(candidate.node)
            if string is not None and statements == 1:
                code = ""
            else:
                span = None
                if string is not None:
                    (row0, col0), (row1, col1) = string.start_point, string.end_point
                    span = (row0 + 1, col0, row1 + 1, col1)
                code = cut_span(lines, start_line, end_line, span)
            query = doc_query(docstring)
        else:
            docstring = _doc_comment(first, rules, data)
            has_body = candidate.node.child_by_field_name("body") is not None
            code = _code_lines(data, first, end) if has_body else ""
            query = doc_query(docstring, markup=True)
        reason = check_code(code, min_code_lines=min_code_lines, max_code_chars=max_code_chars)
        if reason and not pair_reject:
            rejects[reason] += 1
        if reason == "empty_body" or (reason and not index_all):
            continue
        signature = _signature(candidate, data)
        functions.append(
            Function(
                func_name,
                code,
                docstring,
                query,
                start_line,
                end_line,
                language,
                signature,
                pair_reject or reason or "",
            )
        )
    if index_all and rules.doc == "docstring":
        functions.extend(_python_classes(root, rules))
    return functions, rejects


def _python_classes(root: tree_sitter.Node, rules: LanguageRules) -> list[Function]:
    """Module-level Python classes as index rows (``pair_reject`` "class": never a training pair).

    A class's code is its outline, what a reader skims first: decorators and header, then one
    ``def ...: ...`` line per method, bodies and docstrings left out (the class docstring is its ``query``
    and ``docstring``): "TemporaryDirectory" is found by its name and doc, not by its longest method.
    """
    classes = []
    for child in root.named_children:
        inner, outer = _unwrap(child, rules)
        if inner.type not in rules.container_types or inner.has_error:
            continue
        body = inner.child_by_field_name("body")
        methods = [
            f"    {_method_header(method)}: ..."
            for method in (_unwrap(c, rules)[0] for c in (body.named_children if body is not None else []))
            if method.type in rules.function_types
        ]
        docstring = _python_docstring(inner)[0]
        code = _text_between(outer, body).rstrip() + "\n" + "\n".join(methods or ["    ..."]) + "\n"
        signature = one_line(_text_between(inner, body))
        start, end = outer.start_point.row + 1, _last_row(inner) + 1
        name = _container_name(inner)
        query = doc_query(docstring)
        classes.append(Function(name, code, docstring, query, start, end, rules.name, signature, "class"))
    return classes


def _method_header(method: tree_sitter.Node) -> str:
    """``def name(params) -> type`` of a Python method on one line: comments before its body left out."""
    end = method.child_by_field_name("return_type") or method.child_by_field_name("parameters") or method
    return one_line(method.text[: end.end_byte - method.start_byte].decode("utf-8", errors="replace"))


def _text_between(node: tree_sitter.Node, body: tree_sitter.Node | None) -> str:
    """The source from ``node``'s start to where ``body`` starts (the whole node without a body)."""
    end = body.start_byte if body is not None else node.end_byte
    return node.text[: end - node.start_byte].decode("utf-8", errors="replace") if node.text else ""


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

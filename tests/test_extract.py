"""Extraction of (docstring, function) pairs from real Python source: CodeSearchNet's rules."""

from __future__ import annotations

import ast
from pathlib import Path

from semcode.data import extract

TOYPKG = Path(__file__).parent / "data" / "toypkg"


def extracted(path: Path) -> dict[str, extract.Function]:
    functions, _ = extract.extract_functions(path.read_text())
    return {f.func_name: f for f in functions}


def test_module_functions_and_methods_follow_the_rules():
    functions, rejects = extract.extract_functions((TOYPKG / "geometry.py").read_text())
    names = [f.func_name for f in functions]
    assert names == [
        "distance",
        "midpoint",
        "area_of_circle",
        "latest_point",  # "latest" is not a test word
        "Polygon.perimeter",
        "Polygon.bounding_box",
        "Polygon.fetch_vertices",  # async
        "Polygon.is_valid",  # a one-token docstring: corpus yes, pair decided later
        "outer",  # nested inner_helper is not extracted on its own
    ]
    assert rejects == {"dunder": 2, "test_name": 1, "too_short": 1, "empty_body": 1}


def test_query_is_the_first_paragraph_and_code_loses_the_docstring():
    distance = extracted(TOYPKG / "geometry.py")["distance"]
    assert distance.query == "Return the Euclidean distance between two points."
    assert "second paragraph" in distance.docstring
    assert '"""' not in distance.code
    # the blank line after the docstring goes with it; the rest is the original text
    assert distance.code == (
        "def distance(a, b):\n    dx = a[0] - b[0]\n    dy = a[1] - b[1]\n    return math.hypot(dx, dy)\n"
    )
    assert (distance.start_line, distance.end_line) == (6, 14)


def test_methods_are_dedented_and_keep_their_decorators():
    functions = extracted(TOYPKG / "geometry.py")
    box = functions["Polygon.bounding_box"].code
    assert box.startswith("@property\ndef bounding_box(self):\n    xs = ")
    ast.parse(box)  # every extracted function parses on its own
    for function in functions.values():
        ast.parse(function.code)
    # the nested function keeps its own docstring: only the extracted function's docstring goes
    assert "Nested functions are not extracted." in functions["outer"].code
    assert functions["area_of_circle"].query == ""
    assert "# No docstring" in functions["area_of_circle"].code


def test_min_code_lines_counts_from_def_without_docstring():
    source = '@decorator\ndef two(x):\n    """Two lines once the docstring is gone."""\n    return x\n'
    functions, rejects = extract.extract_functions(source, min_code_lines=3)
    assert functions == [] and rejects == {"too_short": 1}
    functions, _ = extract.extract_functions(source, min_code_lines=2)
    assert functions[0].code == "@decorator\ndef two(x):\n    return x\n"


def test_max_code_chars():
    source = "def long(x):\n" + "".join(f"    x = x + {i}\n" for i in range(50)) + "    return x\n"
    _, rejects = extract.extract_functions(source, max_code_chars=100)
    assert rejects == {"too_long": 1}
    functions, _ = extract.extract_functions(source, max_code_chars=0)
    assert len(functions) == 1


def test_docstring_sharing_a_line_with_code():
    source = 'def f(a):\n    "Docstring on a shared line."; b = a + 1\n    c = b * 2\n    return c\n'
    (function,), _ = extract.extract_functions(source)
    assert function.code == "def f(a):\n    b = a + 1\n    c = b * 2\n    return c\n"
    assert function.query == "Docstring on a shared line."


def test_unicode_before_docstring_uses_byte_offsets():
    source = 'class Ünïcode:\n    def méthode(self):\n        """Dökümentation hère."""; x = "é"\n        y = x\n        return y\n'
    (function,), _ = extract.extract_functions(source)
    assert function.code == 'def méthode(self):\n    x = "é"\n    y = x\n    return y\n'


def test_test_words_and_dunders():
    assert extract.is_test_path("pkg/tests/helpers.py")
    assert extract.is_test_path("test_x.py") and extract.is_test_path("idlelib/idle_test/x.py")
    assert extract.is_test_path("pkg/conftest.py") and extract.is_test_path("pkg/TestCase.py")
    assert not extract.is_test_path("unittest/case.py")
    assert not extract.is_test_path("_pytest/python.py")
    assert not extract.is_test_path("pkg/latest.py")
    assert extract.is_test_name("testInvariants") and extract.is_test_name("run_tests")
    assert not extract.is_test_name("greatest_common_divisor")
    assert extract.check_name("__init__") == "dunder" and extract.check_name("__new__") == "dunder"
    assert extract.check_name("_private") is None


def test_first_paragraph_and_tokens():
    doc = "  Summary line\n  continues here.\n\n  Details.\n"
    assert extract.first_paragraph(doc) == "Summary line continues here."
    assert extract.count_tokens("Return the `x`.") == 3
    assert extract.first_paragraph("") == ""


def test_strip_docstring_parses_csn_style_methods():
    code = 'def close(self):\n        """Closes the session."""\n        for v in self.adapters:\n            v.close()'
    stripped, docstring = extract.strip_docstring(code)
    assert stripped == "def close(self):\n        for v in self.adapters:\n            v.close()\n"
    assert docstring == "Closes the session."


def test_strip_docstring_python2_falls_back_to_the_tokenizer():
    code = "def show(rows):\n    '''Print the rows.'''\n    for row in rows:\n        print row\n"
    stripped, docstring = extract.strip_docstring(code)
    assert stripped == "def show(rows):\n    for row in rows:\n        print row\n"
    assert docstring == "Print the rows."


def test_strip_docstring_text_fallback_and_named_function():
    broken = 'def f(:\n    """Broken code keeps working."""\n    return 1\n'
    stripped, docstring = extract.strip_docstring(broken, "Broken code keeps working.")
    assert "Broken code" not in stripped and docstring == "Broken code keeps working."
    source = 'def helper(x):\n    return x\n\n\ndef target(y):\n    """The one we want."""\n    z = y\n    return z\n'
    stripped, docstring = extract.strip_docstring(source, name="target")
    assert stripped == "def target(y):\n    z = y\n    return z\n" and docstring == "The one we want."


def test_form_feeds_and_crlf_keep_line_numbers_right():
    # str.splitlines would split at the form feed and shift every line number after it
    source = 'x = 1  # a form feed follows\x0c\r\n\r\ndef after(a):\r\n    """Doc of after."""\r\n    b = a\r\n    return b\r\n'
    (function,), _ = extract.extract_functions(source)
    assert (function.start_line, function.end_line) == (3, 6)
    assert function.code == "def after(a):\n    b = a\n    return b\n"


def test_python_goes_through_tree_sitter_with_language_and_tags_cut():
    source = (
        "@cache\n"
        "def area(r):\n"
        '    """Area of a circle of radius r.\n'
        "    :param r: the radius\n"
        '    """\n'
        "    squared = r * r\n"
        "    return 3.14159 * squared\n"
        "    # a trailing comment is not part of the function\n"
    )
    (function,), _ = extract.extract_functions(source, language="python")
    assert function.language == "python" and function.query == "Area of a circle of radius r."
    assert ":param r:" in function.docstring
    assert (function.start_line, function.end_line) == (1, 7)
    assert function.code == "@cache\ndef area(r):\n    squared = r * r\n    return 3.14159 * squared\n"


def test_doc_query_and_comment_markers():
    assert extract.doc_query("@contextmanager decorator.") == "@contextmanager decorator."
    assert extract.doc_query("@return the count", markup=True) == ""
    assert extract.doc_query("Uses {@link Map} for <b>fast</b> lookups.<p>More.", markup=True) == (
        "Uses Map for fast lookups."
    )
    assert (
        extract.comment_text("/**\n * First line.\n *   indented\n */").rstrip()
        == "\nFirst line.\n  indented"
    )
    assert extract.comment_text("/// Rust doc") == "Rust doc"
    assert extract.comment_text("# Ruby doc") == "Ruby doc"
    assert extract.comment_text("//go:generate stringer") is None


def test_signature_is_the_header_on_one_line_without_decorators_or_doc():
    source = (
        "class Client:\n"
        "    @retry(times=3)\n"
        "    async def get(\n"
        "        self,\n"
        "        url: str,\n"
        "        timeout: float = 5.0,\n"
        "    ) -> bytes:\n"
        '        """Fetch url and return the body."""\n'
        "        response = await self.session.get(url, timeout=timeout)\n"
        "        return response.body\n"
    )
    (function,), _ = extract.extract_functions(source, language="python")
    assert function.signature == "async def get(self, url: str, timeout: float = 5.0,) -> bytes:"
    assert function.query == "Fetch url and return the body."
    go = (
        "package geo\n\n"
        "// Scale multiplies both coordinates by f.\n"
        "func (p *Point) Scale(f float64) {\n\tp.X *= f\n\tp.Y *= f\n}\n"
    )
    (function,), _ = extract.extract_functions(go, language="go", min_code_lines=1)
    assert function.signature == "func (p *Point) Scale(f float64)"
    assert function.query == "Scale multiplies both coordinates by f."
    javascript = "const add = (a, b) => {\n  const sum = a + b;\n  return sum;\n};\n"
    (function,), _ = extract.extract_functions(javascript, language="javascript", min_code_lines=1)
    assert function.signature == "const add = (a, b) =>"


def test_text_signature_of_a_function_given_as_text():
    assert (
        extract.text_signature("@cache\ndef f(a,\n      b=(1, 2)):\n    return a\n") == "def f(a, b=(1, 2)):"
    )
    assert extract.text_signature("// Doc.\nfunc F(x int) error {\n\treturn nil\n}") == "func F(x int) error"
    assert extract.text_signature("def f(a={}):\n    return a") == "def f(a={}):"
    assert extract.text_signature("") == ""


INDEX_ALL_SOURCE = '''
import os


def getenv(key, default=None):
    """Get an environment variable, return None if it doesn't exist."""
    return os.environ.get(key, default)


@dataclass
class Store(Base):
    """A key-value store on disk."""

    # not a method
    def __init__(self, root: str) -> None:  # a comment the outline leaves out
        self.root = root

    async def get(self, key) -> bytes:
        """Read one value."""
        return open(os.path.join(self.root, key), "rb").read()

    def test_layout(self):
        return True
'''


def test_index_all_keeps_every_definition_and_marks_the_pair_rule_it_breaks():
    functions, rejects = extract.extract_functions(INDEX_ALL_SOURCE, index_all=True)
    by_name = {f.func_name: f for f in functions}
    assert {name: f.pair_reject for name, f in by_name.items()} == {
        "getenv": "too_short",
        "Store.__init__": "dunder",
        "Store.get": "too_short",
        "Store.test_layout": "test_name",
        "Store": "class",
    }
    assert rejects == {"too_short": 2, "dunder": 1, "test_name": 1}  # counted as before: pairs lose them
    assert by_name["getenv"].query == "Get an environment variable, return None if it doesn't exist."
    store = by_name["Store"]
    assert store.code == (
        "@dataclass\nclass Store(Base):\n"
        "    def __init__(self, root: str) -> None: ...\n"
        "    async def get(self, key) -> bytes: ...\n"
        "    def test_layout(self): ...\n"
    )
    assert (store.signature, store.query, store.start_line) == (
        "class Store(Base):",
        "A key-value store on disk.",
        10,
    )
    without, same_rejects = extract.extract_functions(INDEX_ALL_SOURCE)
    assert without == [] and same_rejects == rejects

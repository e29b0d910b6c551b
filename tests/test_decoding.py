"""Generation in every language: the parse check, the stop rule, reranking and the metrics per language.

Hand-written small functions, valid and broken, for the parse check and the stop rules; then a tiny
decoder overfit (a plain torch loop, a few seconds) on six functions in six languages, each followed by
a second function of its language, so that generation has to notice, in each language's own way, that
the first one ended.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semcode.data.languages import LANGUAGES
from semcode.decoding import (
    STOP_RULES,
    Generation,
    function_end,
    generate_code,
    generate_reranked,
    generation_metrics,
    parse_rate,
    parses,
    trim_function,
)
from semcode.models.decoder import build_decoder, code_token_ids, make_batch
from semcode.tokenizer import train_bpe

# One small function per language, as ingest stores them (alone, dedented; methods without their class).
FUNCTIONS = {
    "python": "def add(a, b):\n    return a + b\n",
    "go": "func (s *Stack) Push(v int) {\n\ts.items = append(s.items, v)\n}\n",
    "java": '@Override\npublic String toString() {\n    return "Point(" + x + ")";\n}\n',
    "javascript": "add(a, b) {\n  return a + b;\n}\n",  # a class method
    "typescript": "export function add(a: number, b: number): number {\n  return a + b;\n}\n",
    "ruby": "def add(a, b)\n  if a.nil?\n    return b\n  end\n  a + b\nend\n",
    "php": "public function add($a, $b)\n{\n    return $a + $b;\n}\n",
    "rust": "pub fn first<'a>(items: &'a [String]) -> &'a str {\n    &items[0]\n}\n",
    "c": "static int add(int a, int b) {\n    return a + b;\n}\n",
    "cpp": "template <typename T>\nT Box<T>::get() const {\n    return value_;\n}\n",
}
# The same functions broken: a missing closing brace, a missing `end`, a missing colon.
BROKEN = {
    "python": "def add(a, b)\n    return a + b\n",
    "go": "func (s *Stack) Push(v int) {\n\ts.items = append(s.items, v)\n",
    "java": '@Override\npublic String toString() {\n    return "Point(" + x + ")";\n',
    "javascript": "add(a, b) {\n  return a + b;\n",
    "typescript": "export function add(a: number, b: number): number {\n  return a + b;\n",
    "ruby": "def add(a, b)\n  if a.nil?\n    return b\n  end\n  a + b\n",
    "php": "public function add($a, $b)\n{\n    return $a + $b;\n",
    "rust": "pub fn first<'a>(items: &'a [String]) -> &'a str {\n    &items[0]\n",
    "c": "static int add(int a, int b) {\n    return a + b;\n",
    "cpp": "template <typename T>\nT Box<T>::get() const {\n    return value_;\n",
}
# Valid code of the language that is not a function.
STATEMENTS = {
    "python": "total = add(1, 2)\n",
    "go": "var total = add(1, 2)\n",
    "java": "int total = add(1, 2);\n",
    "javascript": "const total = add(1, 2);\n",
    "typescript": "const total: number = add(1, 2);\n",
    "ruby": "total = add(1, 2)\n",
    "php": "$total = add(1, 2);\n",
    "rust": "const TOTAL: i32 = 3;\n",
    "c": "int total = 3;\n",
    "cpp": "int total = 3;\n",
}
# What a decoder may write after the function: the next function, a closing brace, junk.
TRAILING = {
    "python": "\n\ndef helper():\n    pass\n",
    "go": "\nfunc (s *Stack) Pop() int {\n",
    "java": "\n    public void reset() {\n",
    "javascript": "\n  sub(a, b) {\n",
    "typescript": "\nexport function sub(",
    "ruby": "\ndef sub(a, b)\n",
    "php": "\n}\n",
    "rust": "\n\n#[test]\nfn first_works() {\n",
    "c": "\nint main(void) {\n",
    "cpp": "\n}  // namespace box\n",
}


def test_every_language_has_a_stop_rule():
    assert set(STOP_RULES) == set(LANGUAGES)


@pytest.mark.parametrize("language", LANGUAGES)
def test_parse_check_per_language(language: str):
    assert parses(FUNCTIONS[language], language)
    assert not parses(BROKEN[language], language)  # missing brace / `end` / colon
    assert not parses(STATEMENTS[language], language)  # valid code, but not a function
    assert not parses("", language) and not parses("\n  \n", language)


def test_parse_check_knows_the_forms_ingest_stores():
    assert parses("const add = (a, b) => {\n  return a + b;\n};\n", "javascript")  # a function value
    assert parses("public add(a: number): number {\n  return a;\n}\n", "typescript")  # a class method
    assert parses("function add($a, $b) {\n    return $a + $b;\n}\n", "php")  # no <?php, no class
    assert parses("def self.build(options)\n  new(options)\nend\n", "ruby")
    assert not parses("add(a, b) {\n  return a + b;\n}\n", "go")  # the JavaScript method is not Go
    assert not parses(FUNCTIONS["go"], "python")
    with pytest.raises(ValueError, match="unknown language 'cobol'; supported: python, go, java"):
        parses("x", "cobol")


@pytest.mark.parametrize("language", LANGUAGES)
def test_stop_rule_cuts_after_the_function(language: str):
    function = FUNCTIONS[language]
    text = function + TRAILING[language]
    end = function_end(text, language)
    assert end is not None and text[:end].rstrip() == function.rstrip(), (language, end)
    assert trim_function(text, language) == function
    assert function_end(function.rstrip(), language) is None  # the end's next character not seen yet


def test_stop_rule_ignores_braces_and_ends_in_strings_and_comments():
    go = 'func Brace() string {\n\ts := "}"  // }\n\treturn `{` + s\n}\nfunc Next() {'
    assert function_end(go, "go") == go.index("\nfunc Next")
    java = "@SuppressWarnings({\"unchecked\"})\nvoid f() {\n    char c = '}';\n    /* } */\n}\n}"
    assert function_end(java, "java") == java.rindex("}\n}") + 1  # the annotation's {} is not a body
    arrow = "const f = () => {\n  return `${a}}`;\n};\nconst g"
    assert trim_function(arrow, "javascript") == "const f = () => {\n  return `${a}}`;\n};\n"  # `;` kept
    php = "function f($a) {\n    # {\n    return '{' . $a;\n}\nfunction g"
    assert function_end(php, "php") == php.index("\nfunction g")
    rust = "fn f<'a>(s: &'a str) -> char {\n    '{'\n}\nfn g"
    assert function_end(rust, "rust") == rust.index("\nfn g")
    ruby = "def f\n  x = 'end'\n  y.end\n  [1].each do |i|\n    i\n  end\nend\nputs f\n"
    assert function_end(ruby, "ruby") == ruby.index("\nputs")
    # `end` at the end of the text may still become `end_time`: undecided until the line is complete.
    assert function_end("def f\n  x = 1\nend", "ruby") is None
    with pytest.raises(ValueError, match="unknown language 'kotlin'; supported: python, go"):
        function_end("fun f() {}\n", "kotlin")


def test_parse_rate_per_language():
    codes = [FUNCTIONS["go"], BROKEN["go"], FUNCTIONS["ruby"], FUNCTIONS["python"]]
    overall, by_language = parse_rate(codes, ["go", "go", "ruby", "python"])
    assert overall == 0.75 and by_language == {"go": 0.5, "ruby": 1.0, "python": 1.0}
    with pytest.raises(ValueError, match="as many codes as languages"):
        parse_rate(codes, ["go"])


def test_generation_metrics_per_language():
    generations = [
        Generation(FUNCTIONS["go"], 9, "function_end", "go"),
        Generation(BROKEN["rust"], 9, "max_tokens", "rust"),
        Generation(FUNCTIONS["rust"], 9, "eos", "rust"),
    ]
    corpus = np.eye(3, dtype=np.float32)
    generated = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=np.float32)  # row 1 ranks row 2 first
    references = [FUNCTIONS["go"], FUNCTIONS["rust"], FUNCTIONS["rust"]]
    metrics = generation_metrics(generations, references, generated, corpus)
    assert metrics["parse_rate"] == pytest.approx(2 / 3)
    assert metrics["parse_rate_by_language"] == {"go": 1.0, "rust": 0.5}
    assert metrics["bleu_by_language"]["go"] == pytest.approx(1.0)
    assert metrics["round_trip_recall@10_by_language"] == {"go": 1.0, "rust": 1.0}
    assert generations[0].parses and not generations[1].parses


# ---------------------------------------------------------------------------------------------
# A tiny decoder that writes each function, then goes on into the next one

DIM = 16
WRITTEN = ["go", "java", "javascript", "ruby", "rust", "c"]
NEXT = {  # the function the decoder was taught to write after each one
    "go": "\nfunc (s *Stack) Pop() int {\n\treturn 0\n}\n",
    "java": "\npublic void reset() {\n    x = 0;\n}\n",
    "javascript": "\nsub(a, b) {\n  return a - b;\n}\n",
    "ruby": "\ndef sub(a, b)\n  a - b\nend\n",
    "rust": "\nfn second() -> i32 {\n    2\n}\n",
    "c": "\nint main(void) {\n    return 0;\n}\n",
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    texts = [FUNCTIONS[name] + NEXT[name] for name in WRITTEN] * 5
    return train_bpe(texts, vocab_size=400)


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    vectors = np.random.default_rng(0).standard_normal((len(WRITTEN), DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def overfit(tokenizer, embeddings):
    """A tiny decoder trained until it writes each function and its successor from the embedding and its
    language token."""
    torch.manual_seed(0)
    model = build_decoder("tiny", tokenizer.get_vocab_size(), DIM, prefix_tokens=4, languages=tuple(WRITTEN))
    texts = [FUNCTIONS[name] + NEXT[name] for name in WRITTEN]
    token_ids = code_token_ids(tokenizer, texts, max_length=128)
    batch = make_batch(token_ids, embeddings, list(range(len(texts))), np.arange(len(WRITTEN)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(100):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_generation_stops_where_each_language_ends_its_function(overfit, tokenizer, embeddings):
    generated = generate_code(overfit, tokenizer, embeddings, max_new_tokens=120, language=WRITTEN)
    for name, g in zip(WRITTEN, generated, strict=True):
        assert g.code == FUNCTIONS[name] and g.stopped_by == "function_end", (name, g)
        assert g.language == name and g.parses
    # With Python's rule nothing cuts the brace functions: they run on into the next one.
    go_as_python = trim_function(FUNCTIONS["go"] + NEXT["go"], "python")
    assert NEXT["go"].strip() in go_as_python and not parses(go_as_python, "python")
    with pytest.raises(ValueError, match="unknown language 'golang'; supported: python, go"):
        generate_code(overfit, tokenizer, embeddings[:1], language="golang")
    with pytest.raises(ValueError, match="2 languages for 1 embeddings"):
        generate_code(overfit, tokenizer, embeddings[:1], language=["go", "c"])
    with pytest.raises(ValueError, match="not trained on php: it writes go, java, javascript, ruby, rust, c"):
        generate_code(overfit, tokenizer, embeddings[:1], language="php")


def test_prefix_mode_continues_the_code_given(overfit, tokenizer, embeddings):
    """Given the start of a function, the decoder writes the rest of it; the code starts with the prompt
    and is cut where the function (prompt included) ends."""
    for i, name in enumerate(WRITTEN):
        start = FUNCTIONS[name].split("\n")[0]  # its first line: `int add(int a, int b) {`, `@Override`
        [g] = generate_code(overfit, tokenizer, embeddings[i : i + 1], 120, language=name, prompt=start)
        assert g.code.startswith(start) and g.code == FUNCTIONS[name] and g.parses, (name, g)
        assert g.tokens < len(tokenizer.encode(FUNCTIONS[name]).ids)  # only the continuation was written
    torch.manual_seed(0)
    [best] = generate_reranked(
        overfit,
        tokenizer,
        embeddings[:1],
        lambda codes: embeddings[:1].repeat(len(codes), 0),
        3,
        120,
        language="go",
        prompt="func ",
    )
    assert best.code.startswith("func ") and best.language == "go"
    # A prompt that ends in a line comment is continued on the next line, not inside the comment.
    c = WRITTEN.index("c")
    [g] = generate_code(
        overfit, tokenizer, embeddings[c : c + 1], 120, language="c", prompt="// Add two ints"
    )
    assert g.code.startswith("// Add two ints\n") and g.code.split("\n")[1].strip(), g


def test_a_leading_comment_does_not_end_a_python_function():
    code = "# Calculate the nth prime number\ndef nth_prime(n):\n    return n\n"
    assert trim_function(code + "def next_one():\n    pass\n") == code


def test_reranking_keeps_candidates_that_parse_in_the_language(overfit, tokenizer, embeddings):
    by_code = {FUNCTIONS[name]: embeddings[i] for i, name in enumerate(WRITTEN)}

    def embed_codes(codes: list[str]) -> np.ndarray:
        """The training embedding for a training function, a far-off vector for anything else."""
        return np.stack([by_code.get(code, -embeddings[0]) for code in codes])

    torch.manual_seed(0)
    best = generate_reranked(
        overfit, tokenizer, embeddings, embed_codes, 4, 120, temperature=3.0, language=WRITTEN
    )
    assert [g.code for g in best] == [FUNCTIONS[name] for name in WRITTEN]
    assert all(g.parses for g in best)
    # Asked for Rust, no Go candidate parses: the closest one is kept, and says it does not parse.
    torch.manual_seed(0)
    [fallback] = generate_reranked(
        overfit, tokenizer, embeddings[:1], embed_codes, 3, 120, temperature=3.0, language="rust"
    )
    assert fallback.language == "rust" and not fallback.parses
    greedy = generate_code(overfit, tokenizer, embeddings[:1], 120, language="go")
    with pytest.raises(ValueError, match="other languages"):
        generate_reranked(overfit, tokenizer, embeddings[:1], embed_codes, 2, greedy=greedy, language="c")

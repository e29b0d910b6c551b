"""Decoding code from embeddings, and measuring what comes out, in every language of
semcode.data.languages.

``generate_code`` runs transformers' ``generate`` on the decoder's prefix and language token (greedy,
or sampling with temperature and top-p), after ``<s>`` and, in prefix mode, the tokens of a literal code
prompt (``prompt``: ``int main() {``, ``// Calculate the nth prime number``) that the code continues, and
stops a row at ``</s>``, at ``max_new_tokens``, or where the function ends
(``function_end``, one rule per language, ``STOP_RULES``):

- Python: at the first non-blank line indented no deeper than the ``def`` once the text before that
  line is a complete statement (comment lines neither start nor end the function: a ``# ...`` prompt
  may come before the ``def``). Checking that the text before the line parses is what lets a
  decorator, a multi-line signature (``) -> int:`` at the def's level) or a string with lines at
  column 0 continue.
- Go, Java, JavaScript, TypeScript, PHP, Rust, C, C++: after the ``}`` (and a ``;`` right after it)
  where the text first parses as a complete function with tree-sitter. A simple scanner, which skips
  strings, character literals and comments, proposes the ``}`` that bring the brace depth back to 0;
  only those are parsed, so a step costs one regex pass over the text, not a parse per ``}``.
- Ruby: after the first complete line ending in ``end``, indented no deeper than the ``def``, where
  the text parses as a complete method.

A brace or Ruby function is over once the character after its end shows (a ``;`` may still come; a
Ruby ``end`` may still be the start of ``end_time``), as the Python rule waits for the next line.

The metrics of the train_decoder stage:

- ``reconstruction_metrics``: teacher-forced loss per code token, perplexity and token accuracy;
- parse rate (``parses``, per language: ``parse_rate``): the code is one function of its language.
  Python keeps its ``ast`` check (``is_function``: ``ast.parse`` after ``textwrap.dedent``, and the
  first statement a function definition); the other languages use tree-sitter (no ERROR or MISSING
  node, and a function node of semcode.data.languages' rules in the tree);
- ``corpus_bleu``: corpus BLEU-4 (Papineni et al. 2002: clipped n-gram precisions 1..4, geometric mean,
  brevity penalty; no smoothing) on code tokens (``code_tokens``: identifiers, numbers, single
  punctuation characters);
- round-trip retrieval: the generated code's embedding ranks its source among the test codes
  (semcode.evaluation.full_corpus_ranks).
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from semcode.data.languages import LANGUAGES, RULES, check_languages, parser_for
from semcode.models.decoder import BOS_ID, EOS_ID, PAD_ID, CodeDecoder, make_batch

STOP_REASONS = ("eos", "function_end", "max_tokens")


# ---------------------------------------------------------------------------------------------
# Whether code is a function of its language


def _python_module(code: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning: invalid escape sequence
            return ast.parse(textwrap.dedent(code))
    except (SyntaxError, ValueError):  # ValueError: source with null bytes
        return None


def is_function(code: str) -> bool:
    """Whether ``code`` (dedented) is valid Python that starts with a function definition (decorators
    allowed): what the parse rate counts, so that a stray identifier such as ``defdef_`` does not."""
    module = _python_module(code)
    return (
        module is not None
        and bool(module.body)
        and isinstance(module.body[0], ast.FunctionDef | ast.AsyncFunctionDef)
    )


# How a lone function is put in a file its grammar accepts, tried in order: a JavaScript/TypeScript
# class method (``add(a) {...}``) needs a class around it; PHP code needs ``<?php``, and a method
# (``public function f()``) a class too. The other grammars take a lone function as it is.
_CONTEXTS: dict[str, tuple[tuple[str, str], ...]] = {
    "javascript": (("", ""), ("class _ {\n", "\n}")),
    "typescript": (("", ""), ("class _ {\n", "\n}")),
    "php": (("<?php\n", ""), ("<?php\nclass _ {\n", "\n}")),
}


def _has_function_node(node: Any, function_types: tuple[str, ...]) -> bool:
    """Whether ``node`` or a node under it is of one of ``function_types``."""
    stack = [node]
    while stack:
        node = stack.pop()
        if node.type in function_types:
            return True
        stack.extend(node.children)
    return False


def _tree_sitter_function(code: str, language: str) -> bool:
    """No ERROR or MISSING node in the tree (``has_error`` covers both), and a function node in it."""
    rules = RULES[language]
    function_types = rules.function_types + rules.function_values  # JS/TS: `const f = () => {}` too
    for before, after in _CONTEXTS.get(language, (("", ""),)):
        root = parser_for(language).parse((before + code + after).encode()).root_node
        if not root.has_error and _has_function_node(root, function_types):
            return True
    return False


def parses(code: str, language: str = "python") -> bool:
    """Whether ``code`` is one function (or method) of ``language``: what the parse rate counts.

    Python: ``is_function`` (Python's ``ast``, as before the other languages came). Every other
    language: tree-sitter finds no ERROR and no MISSING node, and a node of the language's
    ``function_types`` (semcode.data.languages; JavaScript/TypeScript function values too).
    """
    if not code.strip():
        return False
    if language == "python":
        return is_function(code)
    if language not in RULES:
        raise ValueError(f"unknown language {language!r}; supported: {', '.join(LANGUAGES)}")
    return _tree_sitter_function(code, language)


# ---------------------------------------------------------------------------------------------
# Where a generated function ends: one rule per language


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _python_end(text: str, language: str = "python") -> int | None:
    """Python: the start of the first non-blank line, after the first one, that is indented no deeper
    than the first non-blank line (the ``def`` or its decorator) and whose preceding text parses. The
    line may be incomplete: as soon as its first character shows, the function is over."""
    def_indent: int | None = None
    offset = 0
    for line in text.split("\n"):
        if line.strip() and not line.lstrip().startswith("#"):
            if def_indent is None:
                def_indent = _indent(line)
            elif _indent(line) <= def_indent and _python_module(text[:offset]) is not None:
                return offset
        offset += len(line) + 1
    return None


# What the brace scanner stops at: comments, string and character-literal quotes, braces. PHP also
# has `#` comments (but `#[...]` is an attribute).
_BRACE_TOKENS = re.compile(r"//|/\*|[{}\"'`]")
_PHP_BRACE_TOKENS = re.compile(r"//|/\*|#(?!\[)|[{}\"'`]")
_STRING_REST = {  # the rest of a string after its opening quote: escapes skipped, up to the quote
    '"': re.compile(r'(?:\\.|[^"\\\n])*"?'),  # (or the line's end: an unclosed string ends there)
    "'": re.compile(r"(?:\\.|[^'\\\n])*'?"),
    "`": re.compile(r"(?:\\[\s\S]|[^`\\])*`?"),  # template literals and Go raw strings span lines
}
_CHAR_LITERAL = re.compile(r"'(?:\\[^'\n]{1,10}|[^'\\\n])'")  # 'x', '\n', '\u{1F600}'; not Rust's 'a
_STRING_QUOTES = {  # which quotes open a string of any length (the others are character literals)
    "javascript": "\"'`",
    "typescript": "\"'`",
    "php": "\"'",
    "go": '"`',
}


def _closing_braces(text: str, language: str) -> list[int]:
    """Offsets of the ``}`` that bring the brace depth back to 0 (or below), skipping comments,
    strings and character literals as far as a simple scanner can."""
    tokens = _PHP_BRACE_TOKENS if language == "php" else _BRACE_TOKENS
    quotes = _STRING_QUOTES.get(language, '"')
    closing: list[int] = []
    depth, i = 0, 0
    while (match := tokens.search(text, i)) is not None:
        found, i = match.group(), match.end()
        if found in ("//", "#"):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
        elif found == "/*":
            close = text.find("*/", i)
            i = len(text) if close < 0 else close + 2
        elif found in quotes:
            i = _STRING_REST[found].match(text, i).end()
        elif found == "'":  # a character literal, or a lone quote (a Rust lifetime): skip the literal
            literal = _CHAR_LITERAL.match(text, match.start())
            i = literal.end() if literal else i
        elif found == "{":
            depth += 1
        elif found == "}":
            depth -= 1
            if depth <= 0:
                closing.append(match.start())
    return closing


def _brace_end(text: str, language: str) -> int | None:
    """Brace languages: just after the first ``}`` (and a ``;`` right after it) where the text parses
    as a complete function, once the next character shows; None while undecided."""
    for close in _closing_braces(text, language):
        rest = text[close + 1 :]
        after = rest.lstrip(" \t")
        if not after:  # nothing after the brace yet: a `;` may come
            return None
        if parses(text[: close + 1], language):
            return close + 1 + (len(rest) - len(after) + 1 if after.startswith(";") else 0)
    return None


_ENDS_WITH_END = re.compile(r"\bend\s*(#.*)?$")


def _ruby_end(text: str, language: str = "ruby") -> int | None:
    """Ruby: the end of the first complete line ending in ``end`` (a comment may follow), indented no
    deeper than the ``def``, where the text parses as a complete method; None while undecided.

    Only lines at the def's indentation are parsed: parsing at every inner ``end`` cost 3 ms a step
    on a 12-``end`` method (one tree-sitter parse each), 40x the Python rule.
    """
    def_indent: int | None = None
    offset = 0
    for line in text.split("\n")[:-1]:  # the last piece has no newline yet: `end` may become `end_at`
        if line.strip() and def_indent is None:
            def_indent = _indent(line)
        offset += len(line)
        closes = def_indent is not None and _indent(line) <= def_indent and _ENDS_WITH_END.search(line)
        if closes and parses(text[:offset], language):
            return offset
        offset += 1
    return None


# language -> its rule: (text, language) -> the offset where the function has ended, or None.
STOP_RULES: dict[str, Callable[[str, str], int | None]] = {
    "python": _python_end,
    "ruby": _ruby_end,
    **{name: _brace_end for name in ("go", "java", "javascript", "typescript", "php", "rust", "c", "cpp")},
}


def function_end(text: str, language: str = "python") -> int | None:
    """The offset in ``text`` where the function it starts with has ended, or None while it goes on
    (the rule of ``language``: STOP_RULES and the module docstring)."""
    if language not in STOP_RULES:
        raise ValueError(f"unknown language {language!r}; supported: {', '.join(LANGUAGES)}")
    return STOP_RULES[language](text, language)


def trim_function(text: str, language: str = "python") -> str:
    """``text`` cut where its function ends, trailing blank lines dropped, with a final newline."""
    end = function_end(text, language)
    code = (text if end is None else text[:end]).rstrip()
    return code + "\n" if code else ""


def check_language(language: str) -> str:
    """A supported language's name, lower-cased; ValueError names the bad one and the choices."""
    return check_languages([language])[0]


def _row_languages(language: str | Sequence[str], rows: int) -> list[str]:
    """One checked language per row: ``language`` names one for all, or lists one per row."""
    if isinstance(language, str):
        return [check_language(language)] * rows
    if len(language) != rows:
        raise ValueError(f"{len(language)} languages for {rows} embeddings")
    return [check_language(name) for name in language]


class StopAtFunctionEnd(StoppingCriteria):
    """Stops each row of a ``generate`` call once its decoded text has a ``function_end`` in its
    row's language (``language``: one name for every row, or one per row)."""

    def __init__(
        self, tokenizer: Any, language: str | Sequence[str] = "python", prompt_ids: Sequence[int] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.language = language
        self.prompt_ids = list(prompt_ids)  # prefix mode: the code so far starts with the prompt
        self.languages: list[str] = []  # one per row, from the first call on
        self.ended: torch.Tensor | None = None  # [B] bool: which rows this criterion stopped

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # input_ids [B, n]: the tokens generated so far (generate called with inputs_embeds only).
        if self.ended is None:
            self.ended = torch.zeros(len(input_ids), dtype=torch.bool)
            self.languages = _row_languages(self.language, len(input_ids))
        done = torch.zeros(len(input_ids), dtype=torch.bool)
        for row, ids in enumerate(input_ids.tolist()):
            if EOS_ID in ids or self.ended[row]:
                done[row] = True
                continue
            text = self.tokenizer.decode(self.prompt_ids + ids, skip_special_tokens=True)
            if function_end(text, self.languages[row]) is not None:
                self.ended[row] = done[row] = True
        return done.to(input_ids.device)


class AddLogitBias(LogitsProcessor):
    """Adds each row's [V] bias (the decoder's token-bias head) to its next-token logits.

    transformers runs custom processors after the repetition penalty and before temperature and top-p.
    """

    def __init__(self, bias: torch.Tensor) -> None:
        self.bias = bias  # [B, V]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.bias.to(scores.dtype)  # scores [B, V]


class NucleusWithinTopK(LogitsProcessor):
    """Temperature, then top-k, then top-p (nucleus) inside those k: what transformers' temperature,
    top_k and top_p warpers do together, without sorting the whole vocabulary.

    transformers' top-p warper sorts all V logits of every row at every step; on a CPU with an 8k
    vocabulary that sort was 53% of sampling time (cProfile, 64 samples of a tiny decoder). ``topk``
    of k = 64 then a sort of those is ~10x cheaper; the nucleus is the same whenever it fits in k.

    With ``gumbel`` the kept logits also get Gumbel(0, 1) noise, so that their argmax *is* a sample of
    the nucleus distribution (the Gumbel-max trick): generation then runs greedy, and transformers'
    ``torch.multinomial`` over all V probabilities (the next 40% of sampling time) is not needed.
    """

    def __init__(self, temperature: float, top_p: float, top_k: int = 64, gumbel: bool = False) -> None:
        self.temperature, self.top_p, self.top_k, self.gumbel = temperature, top_p, top_k, gumbel

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores / self.temperature  # [B, V]
        top, index = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1)  # [B, k], sorted descending
        if self.top_p < 1.0:  # (at 1.0 rounding in the cumulative sum must not drop the tail)
            # Keep a token while the mass before it is < top_p: the first token always stays.
            probabilities = top.softmax(dim=-1)
            mass_before = probabilities.cumsum(dim=-1) - probabilities  # [B, k]
            top = top.masked_fill(mass_before >= self.top_p, -float("inf"))
        if self.gumbel:  # torch's global RNG: seeded runs repeat
            top = top - torch.log(-torch.log(torch.rand_like(top).clamp_min(1e-20)))
        return torch.full_like(scores, -float("inf")).scatter(-1, index, top)


# ---------------------------------------------------------------------------------------------
# Generating


@dataclass(frozen=True)
class Generation:
    code: str  # the function, trimmed at its end, with a final newline ("" when nothing came out)
    tokens: int  # tokens generated (</s> included when it came)
    stopped_by: str  # one of STOP_REASONS
    language: str = "python"  # the language whose stop rule cut it and whose parse check it takes

    @property
    def parses(self) -> bool:
        """Whether the code is one function of its language (the module's ``parses``)."""
        return parses(self.code, self.language)


def generate_code(
    model: CodeDecoder,
    tokenizer: Any,
    embeddings: np.ndarray | torch.Tensor,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    batch_size: int = 32,
    language: str | Sequence[str] = "python",
    prompt: str = "",
) -> list[Generation]:
    """Code for each embedding [N, D]: greedy when ``temperature`` is 0, else sampling with top-p among the
    64 most likely tokens (NucleusWithinTopK).

    ``language`` (one name for every row, or a list of one per row) is the language token the decoder
    is given (a language it was not trained on is refused, named) and picks the rule that stops a row
    where its function ends (``function_end``); each Generation carries it, and its parse check.
    ``prompt`` (prefix mode, every row): literal code the decoder continues; each code starts with it (and
    a newline when its last line is a line comment, ``// Calculate the nth prime number``).

    ``repetition_penalty`` > 1 divides the logits of tokens already generated (Keskar et al. 2019, as
    transformers implements it), which keeps a small decoder out of ``to_to_to...`` loops.
    Sampling draws from torch's global RNG: seed it (``torch.manual_seed``) for repeatable samples.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1 or repetition_penalty <= 0:
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0, got {temperature}, {top_p} "
            f"and {repetition_penalty}"
        )
    embeddings = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    languages = _row_languages(language, len(embeddings))
    language_ids = model.language_ids(languages)  # [N], or None for a decoder without language tokens
    if prompt.rsplit("\n", 1)[-1].lstrip().startswith(("//", "#")):
        prompt += "\n"  # a line comment (or #include): the code comes on the next line, not inside it
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,  # sampling is NucleusWithinTopK's Gumbel-max (below): argmax of perturbed logits
        repetition_penalty=repetition_penalty,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[Generation] = []
    # On a CPU one thread: a token's matmuls are too small to split, and on a busy machine two threads
    # waiting on each other ran 30x slower (32 samples of 64 tokens: 0.7 s against 21 s).
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for start in range(0, len(embeddings), batch_size):
                batch = embeddings[start : start + batch_size].to(device)
                ids_of_rows = None if language_ids is None else language_ids[start : start + batch_size]
                conditioning = model.conditioning(batch, ids_of_rows)  # [B, k, H]
                start_ids = torch.tensor([[BOS_ID, *prompt_ids]] * len(batch), device=device)  # [B, 1+P]
                started = model.lm.get_input_embeddings()(start_ids)  # [B, 1+P, H]
                inputs = torch.cat([conditioning.to(started.dtype), started], dim=1)  # [B, k+1+P, H]
                rows = languages[start : start + batch_size]
                stop = StopAtFunctionEnd(tokenizer, rows, prompt_ids)
                bias = model.logit_bias(batch)  # [B, V], or None without a token-bias head
                processors = LogitsProcessorList([AddLogitBias(bias)] if bias is not None else [])
                if sampling:  # after the bias: the nucleus is taken on the final logits
                    processors.append(NucleusWithinTopK(temperature, top_p, gumbel=True))
                with warnings.catch_warnings():
                    # "the penalty applies only to newly generated tokens": what we want, the prefix has none.
                    warnings.filterwarnings("ignore", message=".*repetition_penalty.*inputs_embeds")
                    generated = model.lm.generate(
                        inputs_embeds=inputs,
                        attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long, device=device),
                        generation_config=config,
                        stopping_criteria=StoppingCriteriaList([stop]),
                        logits_processor=processors,
                    )  # [B, n]: only the new tokens, rows that stopped early padded with <pad>
                for row, ids in enumerate(generated.tolist()):
                    if EOS_ID in ids:
                        ids, stopped_by = ids[: ids.index(EOS_ID) + 1], "eos"
                    elif stop.ended is not None and stop.ended[row]:
                        stopped_by = "function_end"
                    else:
                        stopped_by = "max_tokens"
                    ids = ids[: len(ids) - _trailing_pads(ids)] if stopped_by != "eos" else ids
                    text = tokenizer.decode(prompt_ids + ids, skip_special_tokens=True)
                    code = trim_function(text, rows[row])
                    results.append(Generation(code, len(ids), stopped_by, rows[row]))
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return results


def pick_by_embedding(similarities: np.ndarray, parseable: np.ndarray) -> np.ndarray:
    """For each row, the candidate to keep: the most similar parseable one, else the most similar one.

    similarities [N, C]: cosine of candidate c's embedding to row n's target embedding; parseable
    [N, C] bool. Returns [N] int64 candidate indices.
    """
    similarities = np.asarray(similarities, dtype=np.float64)
    parseable = np.asarray(parseable, dtype=bool)
    if similarities.ndim != 2 or similarities.shape != parseable.shape or similarities.shape[1] == 0:
        raise ValueError(
            f"need similarities and parseable of one shape [N, C >= 1], got {similarities.shape} and "
            f"{parseable.shape}"
        )
    # A parseable candidate beats every unparseable one: add 4 (cosines lie in [-1, 1]).
    return np.argmax(similarities + 4.0 * parseable, axis=1).astype(np.int64)


def generate_reranked(
    model: CodeDecoder,
    tokenizer: Any,
    embeddings: np.ndarray,
    embed_codes: Callable[[list[str]], np.ndarray],
    candidates: int,
    max_new_tokens: int = 256,
    temperature: float = 0.5,
    top_p: float = 0.95,
    repetition_penalty: float = 1.0,
    batch_size: int = 32,
    greedy: list[Generation] | None = None,
    language: str | Sequence[str] = "python",
    prompt: str = "",
) -> list[Generation]:
    """Best of ``candidates`` per embedding [N, D]: the greedy code plus ``candidates - 1`` samples,
    reranked by the encoder (``pick_by_embedding``: the candidate that parses in the row's language
    whose embedding is closest to the one it was decoded from). When no candidate of a row parses, the
    closest one is kept: its ``parses`` is then False, which says so.

    Sample-then-rerank with the embedding model, as vec2text's re-embedding search (Morris et al. 2023):
    the decoder proposes, the encoder that made the target judges. ``embed_codes`` embeds codes
    (code side, L2-normalised) with the encoder that made ``embeddings``; an empty code scores -1.
    ``greedy``: the greedy codes of these embeddings when the caller already has them (same settings).
    ``language``: one name for every row, or one per row; ``prompt``: code every row continues (as
    generate_code).
    """
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    languages = _row_languages(language, len(embeddings))
    if greedy is None:
        greedy = generate_code(
            model,
            tokenizer,
            embeddings,
            max_new_tokens,
            0.0,
            1.0,
            repetition_penalty,
            batch_size,
            languages,
            prompt,
        )
    elif len(greedy) != len(embeddings):
        raise ValueError(f"{len(greedy)} greedy codes for {len(embeddings)} embeddings")
    elif [g.language for g in greedy] != languages:
        raise ValueError("the greedy codes were generated in other languages than the ones asked for")
    proposals = [greedy]
    if candidates > 1:
        repeated = np.repeat(embeddings, candidates - 1, axis=0)  # [N * (C-1), D]: row n's samples together
        sampled = generate_code(
            model,
            tokenizer,
            repeated,
            max_new_tokens,
            temperature,
            top_p,
            repetition_penalty,
            batch_size,
            [name for name in languages for _ in range(candidates - 1)],
            prompt,
        )
        for c in range(candidates - 1):
            proposals.append(sampled[c :: candidates - 1])
    grid = [[proposals[c][n] for c in range(candidates)] for n in range(len(embeddings))]  # [N][C]
    codes = [g.code for row in grid for g in row]
    nonempty = [i for i, code in enumerate(codes) if code]
    similarities = np.full(len(codes), -1.0, dtype=np.float64)
    if nonempty:
        candidate_embeddings = np.asarray(embed_codes([codes[i] for i in nonempty]), dtype=np.float32)
        targets = np.repeat(embeddings, candidates, axis=0)[nonempty]  # [M, D]
        similarities[nonempty] = np.einsum("md,md->m", candidate_embeddings, targets)
    parseable = np.array([g.parses for row in grid for g in row])  # each in its row's language
    chosen = pick_by_embedding(similarities.reshape(-1, candidates), parseable.reshape(-1, candidates))
    return [grid[n][c] for n, c in enumerate(chosen)]


def _trailing_pads(ids: list[int]) -> int:
    count = 0
    while count < len(ids) and ids[len(ids) - 1 - count] == PAD_ID:
        count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Metrics


def reconstruction_metrics(
    model: CodeDecoder,
    token_ids: list[list[int]],
    embeddings: np.ndarray,
    batch_size: int = 32,
    language_ids: np.ndarray | None = None,
) -> dict[str, float]:
    """Teacher-forced loss (mean over code tokens), perplexity (exp of it) and token accuracy.

    ``token_ids[i]`` (``<s> code </s>``, from code_token_ids) is decoded from ``embeddings[i]`` (and the
    language token ``language_ids[i]``, for a decoder that has them).
    """
    if not token_ids:
        raise ValueError("no examples to measure")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, tokens, correct = 0.0, 0, 0
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))  # similar lengths pad little
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = make_batch(token_ids, embeddings, order[start : start + batch_size], language_ids)
                output = model(**{name: tensor.to(device) for name, tensor in batch.items()})
                loss_sum += float(output.loss) * output.tokens
                tokens += output.tokens
                correct += output.correct
    finally:
        model.train(was_training)
    loss = loss_sum / max(1, tokens)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(1, tokens)}


_CODE_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S")


def code_tokens(code: str) -> list[str]:
    """Identifiers, numbers and single non-space characters: the units BLEU counts on code."""
    return _CODE_TOKEN.findall(code)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-4 in [0, 1] of generated codes against their references, on ``code_tokens``."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_length = ref_length = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = code_tokens(hypothesis), code_tokens(reference)
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n in range(1, max_n + 1):
            hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(count, ref_ngrams[gram]) for gram, count in hyp_ngrams.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity * math.exp(log_precision)


def parse_rate(codes: Sequence[str], languages: Sequence[str]) -> tuple[float, dict[str, float]]:
    """The share of ``codes`` that parse as a function of their language (``parses``), overall and per
    language (``{language: share}``, the languages in their first-seen order)."""
    if len(codes) != len(languages) or not codes:
        raise ValueError(f"need as many codes as languages (>= 1), got {len(codes)} and {len(languages)}")
    ok = [parses(code, language) for code, language in zip(codes, languages, strict=True)]
    by_language = {
        name: float(np.mean([o for o, language in zip(ok, languages, strict=True) if language == name]))
        for name in dict.fromkeys(languages)
    }
    return float(np.mean(ok)), by_language


def generation_metrics(
    generations: Sequence[Generation],
    references: Sequence[str],
    generated_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
) -> dict[str, Any]:
    """Parse rate, BLEU and round-trip retrieval of ``generations[i]``, made for ``references[i]``.

    ``corpus_embeddings`` [C, D] are the test codes, reference i being row i (C >= len(generations));
    ``generated_embeddings`` [N, D] embed the generated codes with the same encoder (code side).
    Each generation is checked in its own language. ``parse_rate_by_language``, ``bleu_by_language``
    and ``round_trip_recall@10_by_language`` are ``{language: value}`` over each language's rows (the
    round trip still ranks among the whole corpus, every language in it).
    """
    from semcode.evaluation import full_corpus_ranks, retrieval_metrics

    if len(generations) != len(references) or len(generations) != len(generated_embeddings):
        raise ValueError(
            f"need as many generations, references and embeddings, got {len(generations)}, "
            f"{len(references)} and {len(generated_embeddings)}"
        )
    if len(corpus_embeddings) < len(generations):
        raise ValueError(
            f"the corpus must hold every reference: {len(corpus_embeddings)} codes for "
            f"{len(generations)} generations"
        )
    codes = [g.code for g in generations]
    languages = [g.language for g in generations]
    ranks = full_corpus_ranks(generated_embeddings, corpus_embeddings, np.arange(len(generations)))  # [N]
    retrieval = retrieval_metrics(ranks)
    overall_parse_rate, parse_rate_by_language = parse_rate(codes, languages)
    rows_of = {
        name: [i for i, lang in enumerate(languages) if lang == name] for name in dict.fromkeys(languages)
    }
    reasons = Counter(g.stopped_by for g in generations)
    return {
        "parse_rate": overall_parse_rate,
        "bleu": corpus_bleu(codes, references),
        "round_trip_recall@1": retrieval["recall@1"],
        "round_trip_recall@10": retrieval["recall@10"],
        "round_trip_mrr": retrieval["mrr"],
        "mean_generated_tokens": float(np.mean([g.tokens for g in generations])),
        **{f"stopped_by_{reason}": reasons[reason] / len(generations) for reason in STOP_REASONS},
        "parse_rate_by_language": parse_rate_by_language,
        "bleu_by_language": {
            name: corpus_bleu([codes[i] for i in rows], [references[i] for i in rows])
            for name, rows in rows_of.items()
        },
        "round_trip_recall@10_by_language": {
            name: retrieval_metrics(ranks[rows])["recall@10"] for name, rows in rows_of.items()
        },
    }

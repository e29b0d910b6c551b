"""The languages ingest extracts functions from: one table of tree-sitter rules per language.

Each :class:`LanguageRules` says, for one language, which files are its own (extensions), which
tree-sitter grammar parses them, which syntax nodes are functions, which nodes give a method its
``Type.`` prefix, which nodes are searched for functions, and where the doc comment sits. The
extractor (:mod:`semcode.data.extract`) reads only this table; nothing else is language-specific
except the few per-language checks named in the table (test attributes, receivers, declarators).

Doc comment positions (``doc`` field):

- ``"docstring"``: Python, the first statement of the body when it is a string;
- ``"comment"``: the block of comments right before the function (or before its decorators,
  attributes, ``export``, ``template <...>``), with no blank line between them; ``doc_prefixes``
  says which comments count (``/**`` for Javadoc/JSDoc/PHPDoc, ``///`` for Rust, ``//`` for Go,
  ``#`` for Ruby, any comment for C/C++).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import tree_sitter
import tree_sitter_c
import tree_sitter_cpp
import tree_sitter_go
import tree_sitter_java
import tree_sitter_javascript
import tree_sitter_php
import tree_sitter_python
import tree_sitter_ruby
import tree_sitter_rust
import tree_sitter_typescript


@dataclass(frozen=True)
class LanguageRules:
    """How to find documented functions in one language's syntax tree."""

    name: str
    extensions: tuple[str, ...]  # lower-case, with the dot
    grammar: Callable[[], object]  # the tree-sitter binding's language() function
    function_types: tuple[str, ...]  # nodes that are one function or method
    container_types: tuple[str, ...]  # classes (impl blocks, modules): their name prefixes a method
    search_types: tuple[str, ...]  # other nodes searched for functions (bodies, namespaces, export)
    wrapper_types: tuple[str, ...] = ()  # nodes around one function that belong to it (decorators)
    prefix_types: tuple[str, ...] = ()  # siblings right before a function that belong to it
    doc: str = "comment"  # "docstring" (Python) or "comment" (the comment block before)
    doc_prefixes: tuple[str, ...] = ()  # comments that are doc comments ("" = any comment)
    comment_types: tuple[str, ...] = ("comment",)
    constructor_names: tuple[str, ...] = ()  # skipped like Python's dunders
    test_path_words: tuple[str, ...] = ()  # path words that mark tests beyond "test*"
    nested_containers: bool = True  # False: methods of a class inside a class are left out (Python)
    grammar_by_extension: tuple[tuple[str, Callable[[], object]], ...] = ()  # .tsx: the TSX grammar
    # JavaScript/TypeScript: statements that name a function value (`const f = () => {}`,
    # `res.send = function send() {}`), and the value types that count as functions
    assignment_statements: tuple[str, ...] = ()
    function_values: tuple[str, ...] = ()


JS_FUNCTIONS = ("function_declaration", "generator_function_declaration", "method_definition")
JS_SEARCH = ("program", "class_body", "export_statement", "statement_block")
JS_ASSIGNMENTS = ("expression_statement", "lexical_declaration", "variable_declaration")
JS_FUNCTION_VALUES = ("function_expression", "arrow_function", "generator_function")

RULES: dict[str, LanguageRules] = {
    rules.name: rules
    for rules in (
        LanguageRules(
            name="python",
            extensions=(".py",),
            grammar=tree_sitter_python.language,
            function_types=("function_definition",),
            container_types=("class_definition",),
            search_types=("module", "block"),
            wrapper_types=("decorated_definition",),
            doc="docstring",
            nested_containers=False,
        ),
        LanguageRules(
            name="go",
            extensions=(".go",),
            grammar=tree_sitter_go.language,
            function_types=("function_declaration", "method_declaration"),
            container_types=(),  # methods get their receiver type instead
            search_types=("source_file",),
            doc_prefixes=("//", "/*"),
        ),
        LanguageRules(
            name="java",
            extensions=(".java",),
            grammar=tree_sitter_java.language,
            function_types=("method_declaration",),  # constructors are left out, as in CodeSearchNet
            container_types=(
                "class_declaration",
                "interface_declaration",
                "enum_declaration",
                "record_declaration",
            ),
            search_types=("program", "class_body", "interface_body", "enum_body", "enum_body_declarations"),
            comment_types=("block_comment", "line_comment"),
            doc_prefixes=("/**",),
        ),
        LanguageRules(
            name="javascript",
            extensions=(".js", ".mjs", ".cjs", ".jsx"),
            grammar=tree_sitter_javascript.language,
            function_types=JS_FUNCTIONS,
            container_types=("class_declaration", "class"),
            search_types=JS_SEARCH,
            wrapper_types=("export_statement",),
            prefix_types=("decorator",),
            doc_prefixes=("/**",),
            constructor_names=("constructor",),
            test_path_words=("spec", "specs"),
            assignment_statements=JS_ASSIGNMENTS,
            function_values=JS_FUNCTION_VALUES,
        ),
        LanguageRules(
            name="typescript",
            extensions=(".ts", ".tsx"),
            grammar=tree_sitter_typescript.language_typescript,
            function_types=JS_FUNCTIONS,
            container_types=("class_declaration", "abstract_class_declaration", "class"),
            search_types=(*JS_SEARCH, "internal_module", "module"),
            wrapper_types=("export_statement",),
            prefix_types=("decorator",),
            doc_prefixes=("/**",),
            constructor_names=("constructor",),
            test_path_words=("spec", "specs"),
            assignment_statements=JS_ASSIGNMENTS,
            function_values=JS_FUNCTION_VALUES,
            grammar_by_extension=((".tsx", tree_sitter_typescript.language_tsx),),
        ),
        LanguageRules(
            name="ruby",
            extensions=(".rb",),
            grammar=tree_sitter_ruby.language,
            function_types=("method", "singleton_method"),
            container_types=("class", "module"),
            search_types=("program", "body_statement"),
            doc_prefixes=("#",),
            constructor_names=("initialize",),
            test_path_words=("spec", "specs"),
        ),
        LanguageRules(
            name="php",
            extensions=(".php",),
            grammar=tree_sitter_php.language_php,
            function_types=("function_definition", "method_declaration"),
            container_types=(
                "class_declaration",
                "interface_declaration",
                "trait_declaration",
                "enum_declaration",
            ),
            search_types=(
                "program",
                "declaration_list",
                "enum_declaration_list",
                "namespace_definition",
                "compound_statement",
            ),
            doc_prefixes=("/**",),
            constructor_names=("__construct",),
        ),
        LanguageRules(
            name="rust",
            extensions=(".rs",),
            grammar=tree_sitter_rust.language,
            function_types=("function_item",),
            container_types=("impl_item", "trait_item"),
            search_types=("source_file", "declaration_list", "mod_item"),
            prefix_types=("attribute_item",),
            comment_types=("line_comment", "block_comment"),
            doc_prefixes=("///", "/**"),  # `//!` documents the module, not the next function
        ),
        LanguageRules(
            name="c",
            extensions=(".c", ".h"),
            grammar=tree_sitter_c.language,
            function_types=("function_definition",),
            container_types=(),
            search_types=(
                "translation_unit",
                "preproc_if",
                "preproc_ifdef",
                "preproc_else",
                "preproc_elif",
                "linkage_specification",
                "declaration_list",
            ),
            doc_prefixes=("",),
        ),
        LanguageRules(
            name="cpp",
            extensions=(".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"),
            grammar=tree_sitter_cpp.language,
            function_types=("function_definition",),
            container_types=("class_specifier", "struct_specifier"),
            search_types=(
                "translation_unit",
                "preproc_if",
                "preproc_ifdef",
                "preproc_else",
                "preproc_elif",
                "linkage_specification",
                "namespace_definition",
                "declaration_list",
                "field_declaration_list",
            ),
            wrapper_types=("template_declaration",),
            doc_prefixes=("",),
        ),
    )
}
LANGUAGES: tuple[str, ...] = tuple(RULES)
EXTENSIONS: dict[str, str] = {ext: rules.name for rules in RULES.values() for ext in rules.extensions}


def check_languages(names: Iterable[str]) -> tuple[str, ...]:
    """Lower-cased names, each a supported language; ValueError names the bad one and the choices."""
    checked = []
    for name in names:
        key = name.strip().lower()
        if key not in RULES:
            raise ValueError(f"unknown language {name!r}; supported: {', '.join(LANGUAGES)}")
        if key not in checked:
            checked.append(key)
    return tuple(checked)


def language_of_path(path: str) -> str | None:
    """The language of a file by its extension (``src/a.tsx`` -> ``typescript``), or None."""
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def extensions_of(languages: Iterable[str]) -> tuple[str, ...]:
    """The file extensions of the given languages (all languages when empty)."""
    names = tuple(languages) or LANGUAGES
    return tuple(ext for name in names for ext in RULES[name].extensions)


@cache
def _parser(grammar: Callable[[], object]) -> tree_sitter.Parser:
    """One parser per grammar and process: building a Language is cheap, but not free per file."""
    return tree_sitter.Parser(tree_sitter.Language(grammar()))


def parser_for(language: str, path: str = "") -> tree_sitter.Parser:
    """The cached tree-sitter parser of a language; ``path`` picks a variant grammar (``.tsx``)."""
    rules = RULES[language]
    grammar = rules.grammar
    for extension, variant in rules.grammar_by_extension:
        if path.lower().endswith(extension):
            grammar = variant
    return _parser(grammar)

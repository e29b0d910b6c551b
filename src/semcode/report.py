"""The release bundle's model card (markdown) and report (one self-contained HTML file).

Both are made from bundle.json's content and the bundle's metrics.json (``{"primary", "evaluate",
"export_onnx", "build_index", optional "train_decoder", "ingest", "train_encoder", ...}``) and say the
same things: what the model is, what it was trained on, how it ranks against BM25 and the zero-shot
baseline per suite and protocol (the held-out ``polyglot-<language>`` repositories among the suites,
and a suite's per-language breakdown as ``suite:language`` rows), the everyday-queries suite's success@k
and MRR@10 per system and query form (``everyday_rows``), whether int8 kept its accuracy, what the index holds, and what the
model is and is not for. The HTML has no external assets (inline CSS, an inline SVG bar chart of MRR
per suite/protocol and system), so it opens anywhere, including the KFP UI's HTML viewer; every text
taken from the inputs is escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any

from semcode.everyday import MRR_AT, PROTOCOL, SUCCESS_AT, SUITE_NAME

SYSTEMS = ("model", "bm25", "hybrid", "zero_shot")  # hybrid: the model fused with BM25 (retrieval.fuse)
SYSTEM_LABELS = {
    "model": "model",
    "bm25": "BM25",
    "hybrid": "hybrid",
    "zero_shot": "zero-shot",
    "naive": "naive",  # the everyday suite's afternoon baseline
}
SYSTEM_COLOURS = {"model": "#3b6fd6", "bm25": "#d98c2b", "hybrid": "#8a5cc2", "zero_shot": "#7a9a5a"}
PROTOCOLS = ("csn", "full")

SUITE_NOTE = (
    "polyglot-<language>: a held-out repository, never trained on, queried by its own doc comments over "
    "all its functions; suite:language: that suite's queries in one language, ranked among the whole "
    "suite corpus."
)
INTENDED_USE = (
    "Ranking source code (functions) for a natural-language query, and finding code similar to "
    "other code, over the corpus indexed in this bundle or a corpus of the same kind."
)
LIMITATIONS = (
    "Trained on (docstring, function) pairs: queries phrased unlike docstrings may rank worse.",
    "Evaluated on the suites listed above only; quality on other languages, domains and query styles is "
    "not measured.",
    "Code is truncated to max_length tokens: long functions are embedded from their beginning only.",
    "The index is a snapshot of the corpus at build time; code changed since is not reflected.",
    "Not for security, licensing or correctness decisions: a high score means similar text, not correct code.",
)


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        if value and abs(value) < 10 ** -(digits - 1):  # a learning rate: 5e-05, not 0.0000
            return f"{value:.{max(1, digits - 2)}g}"
        return f"{value:.{digits}f}"
    return str(value)


def _suite_parts(metrics: dict) -> list[tuple[str, dict, str | None]]:
    """(label, result, language) per evaluated suite (language None), each followed by the parts of its
    per-language breakdown, labelled ``suite:language``."""
    parts = []
    for suite_name, suite in ((metrics.get("evaluate") or {}).get("suites") or {}).items():
        if not isinstance(suite, dict):
            continue
        parts.append((str(suite_name), suite, None))
        for language, part in (suite.get("by_language") or {}).items():
            if isinstance(part, dict):
                parts.append((f"{suite_name}:{language}", part, str(language)))
    return parts


def metric_rows(metrics: dict) -> list[dict]:
    """One row per suite and protocol: suite, protocol, queries, candidates, {system: {metric: value}}
    and language (None; a language for the rows of a suite's breakdown, which follow the suite's own)."""
    rows = []
    for suite_name, suite, language in _suite_parts(metrics):
        for protocol in PROTOCOLS:
            systems = suite.get(protocol)
            if not isinstance(systems, dict):
                continue
            per_query = (suite.get("candidates_per_query") or {}).get(protocol) or {}
            low, high = per_query.get("min"), per_query.get("max")
            candidates = str(high) if low == high else f"{low}-{high}"
            rows.append(
                {
                    "suite": suite_name,
                    "protocol": protocol,
                    "queries": suite.get("n_queries"),
                    "candidates": candidates if high is not None else "-",
                    "systems": {s: systems[s] for s in SYSTEMS if isinstance(systems.get(s), dict)},
                    "language": language,
                }
            )
    return rows


LANGUAGE_HEADER = ["language", "training pairs", "suite", "queries", *(SYSTEM_LABELS[s] for s in SYSTEMS)]
LANGUAGE_NOTE = (
    "MRR per programming language (full protocol where measured, else csn): each suite's per-language "
    "breakdown, the held-out polyglot-<language> repositories and, for a one-language corpus, its test split."
)


def language_rows(metrics: dict) -> list[list[str]]:
    """Per programming language and suite: [language, its training pairs (ingest), suite, queries, MRR per
    system]; from the suites' ``by_language`` breakdowns, the ``polyglot-<language>`` suites and, when the
    corpus holds one language only, the ``test`` suite under that language. Sorted by language."""
    languages = (metrics.get("ingest") or {}).get("languages") or {}
    only = next(iter(languages)) if len(languages) == 1 else None
    rows = []
    for label, part, language in _suite_parts(metrics):
        suite = label.split(":", 1)[0]
        if language is None and suite.startswith("polyglot-"):
            language = suite.removeprefix("polyglot-")
        elif language is None and suite == "test" and only is not None:  # the corpus's own held-out split
            language = only
        if language is None:
            continue
        protocol = "full" if isinstance(part.get("full"), dict) else "csn"
        systems = part.get(protocol) or {}
        mrr = [_number((systems.get(s) or {}).get("mrr")) for s in SYSTEMS]
        pairs = (languages.get(language) or {}).get("pairs")
        rows.append([language, _number(pairs), suite, _number(part.get("n_queries")), *mrr])
    return sorted(rows, key=lambda row: (row[0], row[2]))


GAP_HEADER = ["suite", "protocol", "model - baseline", "MRR difference", "95% interval"]
EVERYDAY_METRICS = (*(f"success@{k}" for k in SUCCESS_AT), f"mrr@{MRR_AT}")
EVERYDAY_HEADER = ["queries", "system", *(metric.replace("mrr", "MRR") for metric in EVERYDAY_METRICS)]
EVERYDAY_NOTE = (
    "Everyday queries: searches people type, in keyword and question form, each with its accepted "
    "standard-library answers (semcode/suite_data/everyday.jsonl), each ranking every standard-library "
    "definition of the corpus; success@k is the share of queries with an accepted answer in the top k. "
    "naive: the zero-shot start model over each definition's whole source (docstring and code), cosine only. "
    "Its gaps (protocol stdlib, in the table above) are MRR@10 differences."
)


def not_evaluated(metrics: dict) -> str:
    """The suites evaluate left out and why (too few queries, not present), one sentence; "" when none."""
    skipped = (metrics.get("evaluate") or {}).get("skipped") or {}
    if not skipped:
        return ""
    return "Not evaluated: " + "; ".join(f"{suite} ({why})" for suite, why in skipped.items())


def gap_rows(metrics: dict) -> list[list[str]]:
    """Per suite, protocol and baseline: the model's MRR minus the baseline's, then hybrid's minus the
    model's and the others' (hybrid_vs: the shipped default against what it fuses and what a user starts
    from), with their paired bootstrap intervals (semcode.evaluation.paired_mrr_difference); evaluations
    made before them: none."""
    rows = []
    for suite_name, suite, _ in _suite_parts(metrics):
        for system, key in (("model", "model_vs"), ("hybrid", "hybrid_vs")):
            for protocol, baselines in (suite.get(key) or {}).items():
                for baseline, gap in baselines.items():
                    rows.append(
                        [
                            suite_name,
                            str(protocol),
                            f"{system} - {SYSTEM_LABELS.get(baseline, baseline)}",
                            f"{gap['mrr_difference']:+.4f}",
                            f"{gap['ci95_low']:+.4f} .. {gap['ci95_high']:+.4f}",
                        ]
                    )
    return rows


def everyday_rows(metrics: dict) -> list[list[str]]:
    """The everyday suite's table: for all its queries, then each form's, one row per system with its
    success@1/@3/@10 and MRR@10; none when the suite was not evaluated."""
    suite = ((metrics.get("evaluate") or {}).get("suites") or {}).get(SUITE_NAME)
    if not isinstance(suite, dict):
        return []
    rows = []
    for label, part in [("all", suite), *(suite.get("by_form") or {}).items()]:
        systems = part.get(PROTOCOL) or {}
        for system in (*SYSTEMS, "naive"):
            if isinstance(systems.get(system), dict):
                values = [_number(systems[system].get(metric)) for metric in EVERYDAY_METRICS]
                rows.append([f"{label} ({part.get('n_queries')})", SYSTEM_LABELS[system], *values])
    return rows


def everyday_summary(metrics: dict) -> str:
    """What the everyday suite ranked among and how many of its queries can be answered at all, and the
    hybrid - model gap ("" when not evaluated)."""
    suite = ((metrics.get("evaluate") or {}).get("suites") or {}).get(SUITE_NAME)
    if not isinstance(suite, dict):
        return ""
    coverage = suite.get("coverage") or {}
    text = (
        f"{_number(suite.get('n_queries'))} queries among {_number(suite.get('n_candidates'))} candidates "
        f"(embedded as {suite.get('document', '-')} documents); {_number(coverage.get('covered'))} of them "
        "have an accepted answer among the candidates."
    )
    gap = ((suite.get("hybrid_vs") or {}).get(PROTOCOL) or {}).get("model")
    if isinstance(gap, dict):
        text += (
            f" hybrid - model MRR@10 {gap['mrr_difference']:+.4f} "
            f"(95% {gap['ci95_low']:+.4f} .. {gap['ci95_high']:+.4f})."
        )
    return text


DATA_LICENCE_NOTE = (
    "This model was trained on, and its index holds verbatim, the code of the sources listed under "
    "Training data (for python:site-packages and python:stdlib: the packages installed where it was "
    "trained). That code's own licences apply to it, in the index and in what the decoder reproduces; "
    "check them before you redistribute the bundle or use its results."
)
LICENCE_TABLE_NOTE = (
    "The licences of that code as ingest found them (a dir:'s licence file, a package's metadata, a row's "
    "license field; unknown: none found), after deduplication; each search result names its own:"
)


def licence_rows(metrics: dict) -> list[list[str]]:
    """[licence, training pairs, corpus rows] per licence of the ingest manifest, most training pairs first;
    [] for a manifest made before licences were recorded."""
    found = (metrics.get("ingest") or {}).get("licenses") or {}
    pairs, corpus = found.get("train_pairs") or {}, found.get("corpus") or {}
    names = sorted(
        set(pairs) | set(corpus), key=lambda name: (-pairs.get(name, 0), -corpus.get(name, 0), name)
    )
    return [[name, _number(pairs.get(name, 0)), _number(corpus.get(name, 0))] for name in names]


# The stage settings the model card lists (bundle.json source.stage_configs), in this order.
HYPERPARAMETERS = {  # config class -> (the stage's name in the table, its settings)
    "TrainEncoderConfig": ("encoder", (
        "init_from", "size", "towers", "max_length", "inference_max_length", "epochs", "max_steps",
        "time_budget_minutes", "batch_size", "grad_accum", "lr", "warmup_ratio", "temperature",
        "learnable_temperature", "distill_weight", "hard_negative_weight", "teacher_filter_top_k",
        "teacher_false_negatives", "docstring_share", "zero_stage", "precision", "seed",
    )),
    "TrainDecoderConfig": ("decoder", ("size", "max_length", "max_steps", "time_budget_minutes", "batch_size", "lr", "precision", "seed")),
}  # fmt: skip


REPORT_SAMPLES = 4  # decoder samples shown in report.html
RANK_HEADER = ["rank", "steps", "items/s", "mean loss", "data wait", "all-reduce", "peak RSS (MiB)"]


def training_precision(stage_metrics: dict) -> str:
    """The precision a training stage ran in (its metrics.json), or "-" when it did not train."""
    if "precision" in stage_metrics:
        return str(stage_metrics["precision"])
    if "bf16" in stage_metrics:  # recorded before --precision existed
        return "bf16" if stage_metrics["bf16"] else "fp32"
    return "-"


def rank_rows(ranks: list[dict]) -> list[list[str]]:
    """The training stage's per-rank table (metrics.json ``ranks``; semcode.train.history's rank_table)."""
    return [
        [
            str(entry.get("rank")),
            f"{entry.get('steps', 0):,}",
            f"{entry.get('items_per_second', 0):,.1f}",
            _number(entry.get("mean_loss")),
            f"{entry.get('data_wait_share', 0):.1%}",
            f"{entry.get('allreduce_share', 0):.1%}",
            f"{entry.get('peak_rss_mib', 0):,.0f}",
        ]
        for entry in ranks
    ]


def hyperparameter_rows(bundle: dict) -> list[list[str]]:
    """[stage, setting, value] of the training stages' resolved configs, as bundle.json recorded them."""
    configs = (bundle.get("source") or {}).get("stage_configs") or {}
    rows = []
    for config_class, (stage, names) in HYPERPARAMETERS.items():
        config = configs.get(config_class) or {}
        rows += [[stage, name, str(config[name])] for name in names if name in config]
    return rows


def usage_text(bundle: dict) -> str:
    """How to query this bundle: semcode, sentence-transformers on encoder/, ONNX Runtime on its files."""
    files = bundle.get("default_files") or {}
    query_file = files.get("query", "encoder.int8.onnx")
    return "\n".join(
        [
            "```bash",
            'semcode search ./bundle "read a file line by line" -k 5     # hybrid or dense, per bundle.json',
            'semcode serve ./bundle --port 8080                          # POST /search {"query": ..., "k": 5}',
            "```",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer       # the encoder in fp32, torch",
            'model = SentenceTransformer("./bundle/encoder")',
            f'query = model.encode([{bundle.get("query_prefix", "")!r} + "read a file line by line"], normalize_embeddings=True)',
            "```",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort                      # the shipped ONNX file, no torch",
            "from tokenizers import Tokenizer",
            'tokenizer = Tokenizer.from_file("./bundle/tokenizer.json")',
            f"tokenizer.enable_truncation({bundle.get('max_length')})",
            f'session = ort.InferenceSession("./bundle/{query_file}")',
            f'encoding = tokenizer.encode({bundle.get("query_prefix", "")!r} + "read a file line by line")',
            'feeds = {"input_ids": np.array([encoding.ids]), "attention_mask": np.array([encoding.attention_mask])}',
            'vector = session.run(["embedding"], feeds)[0]             # [1, dim], unit length: cosine = dot',
            "```",
            "",
            "The int8 file quantises each call's activations with one scale: run it one text per call, as "
            "semcode does, for the vectors the index was built with.",
        ]
    )


def _facts(bundle: dict, metrics: dict) -> dict[str, list[tuple[str, str]]]:
    """The tables both documents show, as (label, value) pairs per section."""
    encoder_config = (bundle.get("source") or {}).get("encoder_config") or {}
    model = [
        ("towers", str(bundle.get("towers"))),
        ("embedding dimension", str(bundle.get("dim"))),
        ("max length (tokens)", str(bundle.get("max_length"))),
        ("query prefix", repr(bundle.get("query_prefix", ""))),
        ("code prefix", repr(bundle.get("code_prefix", ""))),
        (
            "encoder size / initialised from",
            f"{encoder_config.get('size', '-')} / {encoder_config.get('source', '-')}",
        ),
        ("default encoder", f"{bundle.get('default_encoder')} ({bundle.get('default_precision')})"),
        ("decoder", "decoder/" if bundle.get("decoder") else "none"),
    ]
    train = metrics.get("train_encoder") or {}
    if train:
        model += [
            ("training steps", _number(train.get("steps"))),
            ("training precision", training_precision(train)),
            ("training pairs", _number(train.get("train_pairs"))),
            ("best validation MRR", _number(train.get("best_valid_mrr"))),
        ]

    data: list[tuple[str, str]] = []
    ingest = metrics.get("ingest") or {}
    if ingest:
        for spec, source in (ingest.get("sources") or {}).items():
            data.append(
                (
                    f"source {spec}",
                    f"{_number(source.get('pairs'))} pairs, {_number(source.get('corpus_rows'))} corpus rows",
                )
            )
        totals = ingest.get("totals") or {}
        data.append(
            (
                "total",
                f"{_number(totals.get('pairs'))} pairs, {_number(totals.get('corpus_rows'))} corpus rows",
            )
        )
        split = ingest.get("split") or {}
        sizes = split.get("sizes") or {}
        if sizes:
            data.append(
                (
                    f"split by {split.get('unit', '?')}",
                    ", ".join(f"{name} {count}" for name, count in sizes.items()),
                )
            )

    parity = (bundle.get("metrics") or {}).get("int8_parity") or {}
    int8 = [
        ("int8 parity", "held" if parity.get("held") else "FAILED: the default encoder is fp32"),
        ("test MRR fp32 / int8", f"{_number(parity.get('mrr_fp32'))} / {_number(parity.get('mrr_int8'))}"),
        ("MRR loss (allowed)", f"{_number(parity.get('mrr_loss'))} ({_number(parity.get('max_mrr_loss'))})"),
        ("min cosine int8 vs fp32", _number(parity.get("cosine_min"), digits=6)),
    ]
    if parity.get("reason"):
        int8.append(("why", str(parity["reason"])))

    index_metrics = metrics.get("build_index") or {}
    latency = index_metrics.get("search_latency") or {}
    index = [
        ("vectors", _number(index_metrics.get("ntotal"))),
        *_coverage_facts(index_metrics.get("coverage")),
        ("index", f"{index_metrics.get('factory', '-')} ({index_metrics.get('index_type', '-')})"),
        ("recall@10 vs exact search", _number(index_metrics.get("recall@10"))),
        (
            "default search mode",
            str(bundle.get("default_mode", "dense")),
        ),  # semcode search / serve without --mode
        (
            "search latency p50 / p99 (ms)",
            f"{_number(latency.get('p50_ms'))} / {_number(latency.get('p99_ms'))}",
        ),
    ]
    facts = {"Model": model, "Training data": data, "int8 encoder": int8, "Index": index}
    decoder_metrics = metrics.get("train_decoder") or {}
    if decoder_metrics:
        facts["Decoder"] = _decoder_facts(decoder_metrics)
    return facts


def coverage_text(coverage: dict) -> str:
    """``N of M functions, sampled by <how>`` (or ``N of M functions (all)``), from build_index's coverage."""
    counts = f"{coverage.get('indexed', 0):,} of {coverage.get('corpus_rows', 0):,} functions"
    sampled_by = coverage.get("sampled_by", "?")
    return f"{counts} (all)" if sampled_by == "all" else f"{counts}, sampled by {sampled_by}"


def _coverage_facts(coverage: dict | None) -> list[tuple[str, str]]:
    """What of the corpus the index covers, overall and per source; nothing for an index built before."""
    if not isinstance(coverage, dict):
        return []
    per_source = "; ".join(
        f"{source} {indexed:,} of {total:,}"
        for source, (indexed, total) in (coverage.get("per_source") or {}).items()
    )
    return [("functions indexed", coverage_text(coverage)), ("per source", per_source or "-")]


def _decoder_facts(decoder: dict) -> list[tuple[str, str]]:
    """The decoder's test metrics: teacher-forced, then greedy and (when measured) best-of-N generation."""
    rows = [
        (
            "test perplexity / token accuracy",
            f"{_number(decoder.get('test_perplexity'))} / {_number(decoder.get('test_token_accuracy'))}",
        ),
        (
            "training",
            f"{_number(decoder.get('steps'))} steps, {_number(decoder.get('tokens_per_second'))} tokens/s, "
            f"{training_precision(decoder)}",
        ),
    ]
    decodings = [("greedy", "")]
    if "reranked_parse_rate" in decoder:
        decodings.append((f"best of {decoder.get('rerank_candidates')}", "reranked_"))
    for label, infix in decodings:
        for source, prefix in (("code", ""), ("docstring", "query_")):
            key = f"{prefix}{infix}"
            if f"{key}parse_rate" in decoder:
                rows.append(
                    (
                        f"{label} from {source}: parse rate / round-trip R@1 / R@10",
                        f"{_number(decoder.get(f'{key}parse_rate'))} / "
                        f"{_number(decoder.get(f'{key}round_trip_recall@1'))} / "
                        f"{_number(decoder.get(f'{key}round_trip_recall@10'))}",
                    )
                )
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown


def _md(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_table_rows(rows: list[dict], metric: str) -> list[list[str]]:
    return [
        [
            row["suite"],
            row["protocol"],
            _number(row["queries"]),
            row["candidates"],
            *(_number(row["systems"].get(s, {}).get(metric)) for s in SYSTEMS),
        ]
        for row in rows
    ]


def gate_decision(bundle: dict) -> tuple[str, list[str]] | None:
    """("PASSED" | "REFUSED", its reasons) from the gate's summary in bundle.json, None when not gated."""
    gate = (bundle.get("source") or {}).get("gate")
    if not isinstance(gate, dict) or "passed" not in gate:
        return None
    return ("PASSED" if gate["passed"] else "REFUSED"), [str(reason) for reason in gate.get("reasons") or []]


def model_card(bundle: dict, metrics: dict) -> str:
    """model_card.md of a bundle."""
    primary = (bundle.get("metrics") or {}).get("primary") or {}
    rows = metric_rows(metrics)
    header = ["suite", "protocol", "queries", "candidates", *(SYSTEM_LABELS[s] for s in SYSTEMS)]
    parts = [
        f"# {_md(bundle.get('name'))} {_md(bundle.get('version'))}",
        "",
        "A natural-language-to-code search encoder: queries and code are embedded into one space "
        f"({bundle.get('dim')} dimensions, cosine similarity) and the corpus is searched with a FAISS index. "
        f"Made by semcode {_md(bundle.get('semcode_version'))} on {_md(bundle.get('created_at'))}.",
        "",
        f"Primary metric: **{_md(primary.get('name'))} = {_number(primary.get('value'))}**",
    ]
    decision = gate_decision(bundle)
    if decision is not None:
        verdict, reasons = decision
        parts += ["", "## Release decision", "", f"The promotion gate **{verdict}** this bundle:", ""]
        parts += [f"- {_md(reason)}" for reason in reasons]
    for title, facts in _facts(bundle, metrics).items():
        parts += ["", f"## {title}", ""]
        parts.append(
            _md_table(["", ""], [[label, value] for label, value in facts]) if facts else "Not recorded."
        )
        if title == "Model":
            parts += [
                "",
                "## Evaluation",
                "",
                "MRR per suite and protocol (csn: each query ranks its gold among random distractors; full: "
                "among the whole suite corpus). BM25 and the zero-shot baseline rank the same queries "
                f"and candidates. {SUITE_NOTE}",
                "",
                _md_table(header, _metric_table_rows(rows, "mrr")) if rows else "No evaluation recorded.",
                "",
                *([_md(skipped), ""] if (skipped := not_evaluated(metrics)) else []),
                "Recall@10:",
                "",
                _md_table(header, _metric_table_rows(rows, "recall@10")) if rows else "",
            ]
            gaps = gap_rows(metrics)
            if gaps:
                parts += [
                    "",
                    "The model, and hybrid, against each baseline on the same queries (95% paired bootstrap "
                    "interval of the MRR difference: an interval that contains 0 is within the suite's noise):",
                    "",
                    _md_table(GAP_HEADER, gaps),
                ]
            languages = language_rows(metrics)
            if languages:
                parts += [
                    "",
                    "### Per language",
                    "",
                    LANGUAGE_NOTE,
                    "",
                    _md_table(LANGUAGE_HEADER, languages),
                ]
            everyday = everyday_rows(metrics)
            if everyday:
                parts += ["", "### Everyday queries", "", EVERYDAY_NOTE, everyday_summary(metrics)]
                parts += ["", _md_table(EVERYDAY_HEADER, everyday)]
    hyperparameters = hyperparameter_rows(bundle)
    if hyperparameters:
        parts += ["", "## Hyperparameters", "", _md_table(["stage", "setting", "value"], hyperparameters)]
    parts += ["", "## Usage", "", usage_text(bundle)]
    parts += ["", "## Intended use", "", INTENDED_USE, "", "## Limitations", ""]
    parts += [f"- {item}" for item in LIMITATIONS]
    parts += ["", "## Data and licences", "", DATA_LICENCE_NOTE]
    licences = licence_rows(metrics)
    if licences:
        parts += [
            "",
            LICENCE_TABLE_NOTE,
            "",
            _md_table(["licence (SPDX)", "training pairs", "corpus rows"], licences),
        ]
    parts += [
        "",
        "## Files",
        "",
        "bundle.json (metadata and sha256 of every file), tokenizer.json, "
        + ", ".join(
            sorted({f for per_kind in (bundle.get("encoders") or {}).values() for f in per_kind.values()})
        )
        + ", encoder/ (sentence-transformers), "
        + ("decoder/, " if bundle.get("decoder") else "")
        + "index.faiss, index_meta.parquet, metrics.json, report.html.",
        "",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# HTML


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    """A table; a header of empty cells (the label / value fact tables) is left out, not drawn empty."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def mrr_chart_svg(rows: list[dict], bar_width: int = 18, height: int = 200) -> str:
    """Grouped bars: one group per suite/protocol, one bar per system, MRR on a 0..1 axis."""
    if not rows:
        return ""
    systems = [s for s in SYSTEMS if any(s in row["systems"] for row in rows)]
    left, top, bottom, gap = 40, 10, 40, 24
    group_width = bar_width * len(systems) + gap
    width = left + group_width * len(rows) + 10
    total_height = top + height + bottom + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height}" '
        f'role="img" aria-label="MRR per suite, protocol and system">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + height * (1 - tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{tick:.2f}</text>'
        )
    for g, row in enumerate(rows):
        x0 = left + g * group_width + gap / 2
        for s, system in enumerate(systems):
            value = row["systems"].get(system, {}).get("mrr")
            if not isinstance(value, int | float):
                continue
            bar = height * max(0.0, min(1.0, float(value)))
            x = x0 + s * bar_width
            parts.append(
                f'<rect x="{x:.1f}" y="{top + height - bar:.1f}" width="{bar_width - 2}" height="{bar:.1f}" '
                f'fill="{SYSTEM_COLOURS[system]}"><title>{_e(row["suite"])}/{_e(row["protocol"])} '
                f"{_e(SYSTEM_LABELS[system])}: {float(value):.4f}</title></rect>"
            )
        label_x = x0 + bar_width * len(systems) / 2
        parts.append(
            f'<text x="{label_x:.1f}" y="{top + height + 14}" font-size="10" text-anchor="middle">'
            f"{_e(row['suite'])}</text>"
            f'<text x="{label_x:.1f}" y="{top + height + 26}" font-size="10" text-anchor="middle">'
            f"{_e(row['protocol'])}</text>"
        )
    legend_y = top + height + bottom + 10
    for s, system in enumerate(systems):
        x = left + s * 90
        parts.append(
            f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{SYSTEM_COLOURS[system]}"/>'
            f'<text x="{x + 14}" y="{legend_y}" font-size="11">{_e(SYSTEM_LABELS[system])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# history.json step keys that are not curves of their own (the rest are the loss and its parts)
STEP_BOOKKEEPING = ("step", "epoch", "lr", "grad_norm", "items", "seconds", "data_seconds")
MAX_CURVE_POINTS = 400  # a long run's curve is thinned to every n-th step: the SVG stays small


def line_chart_svg(title: str, points: list[tuple[float, float]], width: int = 300, height: int = 140) -> str:
    """One curve as inline SVG: y against x (steps), the first, last, lowest and highest values labelled."""
    points = [(float(x), float(y)) for x, y in points if isinstance(y, int | float) and math.isfinite(y)]
    if not points:
        return ""
    if len(points) > MAX_CURVE_POINTS:
        stride = math.ceil(len(points) / MAX_CURVE_POINTS)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    left, right, top, bottom = 48, 8, 20, 22
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    x_span, y_span = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or abs(y_hi) or 1.0

    def at(x: float, y: float) -> str:
        px = left + (width - left - right) * (x - x_lo) / x_span
        py = top + (height - top - bottom) * (1 - (y - y_lo) / y_span)
        return f"{px:.1f},{py:.1f}"

    path = " ".join(at(x, y) for x, y in points)
    last_x, last_y = points[-1]
    cx, cy = at(last_x, last_y).split(",")
    marker = f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="#1565c0"/>'  # where the run ended
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}: {len(points)} points, last {_number(last_y)}</title>'
        f'<text x="{left}" y="13" font-size="11" font-weight="bold">{_e(title)}</text>'
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#ccc"/>'
        f'<text x="{left - 4}" y="{top + 9}" font-size="9" text-anchor="end">{_e(_number(y_hi, 3))}</text>'
        f'<text x="{left - 4}" y="{height - bottom}" font-size="9" text-anchor="end">{_e(_number(y_lo, 3))}</text>'
        f'<text x="{left}" y="{height - 8}" font-size="9">step {x_lo:,.0f}</text>'
        f'<text x="{width - right}" y="{height - 8}" font-size="9" text-anchor="end">step {x_hi:,.0f}</text>'
        f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{path}"/>{marker}</svg>'
    )


def training_curves(history: dict) -> list[str]:
    """The curves of one training stage's history.json: each loss part, lr, grad norm (before clipping)
    per step, then each validation metric per evaluation."""
    steps = [entry for entry in history.get("steps") or [] if isinstance(entry, dict) and "step" in entry]
    evals = [entry for entry in history.get("evals") or [] if isinstance(entry, dict) and "step" in entry]
    names = [key for key in (steps[0] if steps else {}) if key not in STEP_BOOKKEEPING] + ["lr", "grad_norm"]
    charts = [line_chart_svg(name, [(e["step"], e.get(name)) for e in steps]) for name in names]
    metrics = [key for key in (evals[0] if evals else {}) if key not in ("step", "seconds")]
    charts += [line_chart_svg(f"valid {name}", [(e["step"], e.get(name)) for e in evals]) for name in metrics]
    return [chart for chart in charts if chart]


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
.failed { color: #b00020; font-weight: bold; }
.passed { color: #1b5e20; font-weight: bold; }
.curves svg { margin: 0 0.75rem 0.75rem 0; }
"""


def curves_html(title: str, history: dict, metrics: dict | None = None) -> str:
    """One training stage's curves as a self-contained page (the training components' KFP HTML
    artifact, which the KFP UI shows in its visualisation tab): every curve of ``history`` and, from
    ``metrics`` (the stage's metrics.json), the per-rank table."""
    charts = training_curves(history)
    body = [f"<h1>{_e(title)}</h1>", '<div class="curves">' + "".join(charts) + "</div>" if charts else ""]
    ranks = rank_rows((metrics or {}).get("ranks") or [])
    if ranks:
        spread = (metrics or {}).get("items_per_second_spread")
        body += [
            f"<h2>Workers</h2><p>items/s max/min {_e(_number(spread, 3))}</p>",
            _html_table(RANK_HEADER, ranks),
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def pick_samples(samples: list[dict], count: int = REPORT_SAMPLES) -> list[dict]:
    """A handful of the decoder's test samples for the report: the best decoding it made (best-of-N
    over greedy), from docstrings first (what a user types), then from code, in their saved order."""
    decodings = sorted({str(s.get("decoding")) for s in samples}, key=lambda d: d == "greedy")
    chosen = [s for s in samples if str(s.get("decoding")) == (decodings[0] if decodings else None)]
    chosen.sort(key=lambda s: s.get("from") != "query")  # stable: docstrings first
    return chosen[:count]


def samples_html(samples: list[dict]) -> str:
    does_not_parse = '<span class="failed">does not parse</span>'
    rows = "".join(
        f"<tr><td>{_e(s.get('query'))}</td><td><pre>{_e(s.get('generated'))}</pre></td>"
        f"<td>{'parses' if s.get('parses') else does_not_parse}</td></tr>"
        for s in samples
    )
    return f"<table><tr><th>docstring</th><th>generated</th><th>parse check</th></tr>{rows}</table>"


def report_html(
    bundle: dict, metrics: dict, histories: dict[str, dict] | None = None, samples: list[dict] | None = None
) -> str:
    """report.html of a bundle: self-contained, every input text escaped. ``histories``: {stage: its
    history.json} of the training stages, drawn as curves (inline SVG); ``samples``: the decoder's
    samples.jsonl rows, of which a handful are shown with their parse check."""
    primary = (bundle.get("metrics") or {}).get("primary") or {}
    rows = metric_rows(metrics)
    header = ["suite", "protocol", "queries", "candidates", *(SYSTEM_LABELS[s] for s in SYSTEMS)]
    title = f"{bundle.get('name')} {bundle.get('version')}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Natural-language-to-code search encoder made by semcode {_e(bundle.get('semcode_version'))} "
        f"on {_e(bundle.get('created_at'))}. Primary metric: <b>{_e(primary.get('name'))} = "
        f"{_e(_number(primary.get('value')))}</b>. Default search mode: <b>{_e(bundle.get('default_mode', 'dense'))}</b> "
        "(semcode search and serve without --mode).</p>",
    ]
    decision = gate_decision(bundle)
    if decision is not None:
        verdict, reasons = decision
        css = "passed" if verdict == "PASSED" else "failed"
        body += [
            "<h2>Release decision</h2>",
            f'<p>The promotion gate <b class="{css}">{verdict}</b> this bundle:</p>',
            "<ul>" + "".join(f"<li>{_e(reason)}</li>" for reason in reasons) + "</ul>",
        ]
    body += [
        "<h2>Evaluation: MRR</h2>",
        f"<p>{_e(SUITE_NOTE)}</p>",
        mrr_chart_svg([row for row in rows if row["language"] is None]),  # whole suites; languages below
        _html_table(header, _metric_table_rows(rows, "mrr")) if rows else "<p>No evaluation recorded.</p>",
        f"<p>{_e(skipped)}</p>" if (skipped := not_evaluated(metrics)) else "",
        "<h2>Evaluation: Recall@10</h2>",
        _html_table(header, _metric_table_rows(rows, "recall@10")) if rows else "",
    ]
    gaps = gap_rows(metrics)
    if gaps:
        body += [
            "<h2>Evaluation: the model, and hybrid, against each baseline</h2>",
            "<p>MRR difference on the same queries, with its 95% paired bootstrap interval (one that "
            "contains 0 is within the suite's noise).</p>",
            _html_table(GAP_HEADER, gaps),
        ]
    languages = language_rows(metrics)
    if languages:
        body += [
            "<h2>Evaluation: per language</h2>",
            f"<p>{_e(LANGUAGE_NOTE)}</p>",
            _html_table(LANGUAGE_HEADER, languages),
        ]
    everyday = everyday_rows(metrics)
    if everyday:
        body += [
            "<h2>Evaluation: everyday queries</h2>",
            f"<p>{_e(EVERYDAY_NOTE)} {_e(everyday_summary(metrics))}</p>",
            _html_table(EVERYDAY_HEADER, everyday),
        ]
    for stage, history in (histories or {}).items():
        charts = training_curves(history)
        if charts:
            body += [f"<h2>Training: {_e(stage)}</h2>", '<div class="curves">' + "".join(charts) + "</div>"]
    for stage in ("train_encoder", "train_decoder"):
        ranks = rank_rows((metrics.get(stage) or {}).get("ranks") or [])
        if ranks:
            spread = (metrics.get(stage) or {}).get("items_per_second_spread")
            body += [
                f"<h2>Workers: {_e(stage)}</h2>",
                f"<p>Each rank's share of the training; items/s max/min {_e(_number(spread, 3))}.</p>",
                _html_table(RANK_HEADER, ranks),
            ]
    parity = (bundle.get("metrics") or {}).get("int8_parity") or {}
    for section, facts in _facts(bundle, metrics).items():
        body.append(f"<h2>{_e(section)}</h2>")
        if section == "int8 encoder" and not parity.get("held", True):
            body.append('<p class="failed">int8 parity failed: the bundle serves the fp32 encoder.</p>')
        body.append(
            _html_table(["", ""], [[label, value] for label, value in facts])
            if facts
            else "<p>Not recorded.</p>"
        )
    shown = pick_samples(samples or [])
    if shown:
        decoding = shown[0].get("decoding")
        body += [
            f"<h2>Decoder samples ({_e(decoding)})</h2>",
            "<p>Code the decoder wrote from the embedding of a test docstring (or of test code), and "
            "whether it parses (tree-sitter).</p>",
            samples_html(shown),
        ]
    hyperparameters = hyperparameter_rows(bundle)
    if hyperparameters:
        body += ["<h2>Hyperparameters</h2>", _html_table(["stage", "setting", "value"], hyperparameters)]
    body += ["<h2>Intended use</h2>", f"<p>{_e(INTENDED_USE)}</p>", "<h2>Limitations</h2>", "<ul>"]
    body += [f"<li>{_e(item)}</li>" for item in LIMITATIONS]
    body.append("</ul>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )

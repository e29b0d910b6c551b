"""The model card and report.html show the polyglot suites and a suite's per-language breakdown."""

from __future__ import annotations

import re

from semcode.report import gap_rows, line_chart_svg, metric_rows, model_card, report_html, training_curves


def systems(model: float, bm25: float) -> dict:
    return {
        "model": {"mrr": model, "recall@10": 1.0, "n_queries": 3},
        "bm25": {"mrr": bm25, "recall@10": 0.5, "n_queries": 3},
    }


def part(n_queries: int, candidates: int, model: float, bm25: float) -> dict:
    return {
        "full": systems(model, bm25),
        "n_queries": n_queries,
        "candidates_per_query": {"full": {"min": candidates, "max": candidates, "mean": float(candidates)}},
        "model_vs": {"full": {"bm25": {"mrr_difference": model - bm25, "ci95_low": -0.1, "ci95_high": 0.3}}},
    }


METRICS = {
    "evaluate": {
        "suites": {
            "test": {
                **part(5, 9, 0.6, 0.5),
                "by_language": {"go": part(3, 9, 0.7, 0.4), "python": part(2, 9, 0.45, 0.65)},
            },
            "polyglot-go": part(202, 258, 0.5512, 0.4321),
        }
    }
}
BUNDLE = {"name": "semcode-test", "version": "v1", "dim": 8}


def test_rows_follow_each_suite_with_its_languages() -> None:
    rows = metric_rows(METRICS)
    assert [(row["suite"], row["language"], row["queries"]) for row in rows] == [
        ("test", None, 5),
        ("test:go", "go", 3),
        ("test:python", "python", 2),
        ("polyglot-go", None, 202),
    ]
    assert [row[0] for row in gap_rows(METRICS)] == ["test", "test:go", "test:python", "polyglot-go"]


def test_model_card_and_report_show_the_languages_and_the_polyglot_suites() -> None:
    card = model_card(BUNDLE, METRICS)
    assert "| test:go | full | 3 | 9 | 0.7000 | 0.4000 | - |" in card
    assert "| polyglot-go | full | 202 | 258 | 0.5512 | 0.4321 | - |" in card
    assert "| test:python | full | model - BM25 | -0.2000 | -0.1000 .. +0.3000 |" in card
    assert "polyglot-&lt;language&gt;" not in card and "polyglot-<language>: a held-out repository" in card

    page = report_html(BUNDLE, METRICS)
    assert "<td>test:go</td><td>full</td><td>3</td><td>9</td><td>0.7000</td>" in page
    assert "<td>polyglot-go</td><td>full</td><td>202</td><td>258</td><td>0.5512</td>" in page
    chart = page[page.index("<svg") : page.index("</svg>")]
    labels = re.findall(r'text-anchor="middle">([^<]*)</text>', chart)
    assert labels == ["test", "full", "polyglot-go", "full"]  # the chart: whole suites only


def test_report_draws_each_training_curve_from_history() -> None:
    steps = [
        {"step": s, "epoch": 1, "lr": 1e-4 * s, "loss": 3.0 / s, "contrastive": 2.0 / s, "grad_norm": 1.0 + s}
        | {"items": 32, "seconds": 0.1, "data_seconds": 0.0}
        for s in range(1, 6)
    ]
    history = {
        "steps": steps,
        "evals": [{"step": 0, "mrr": 0.5, "seconds": 1}, {"step": 5, "mrr": 0.6}],
        "best": None,
    }
    charts = training_curves(history)
    # loss, its part, lr, grad norm per step; the validation metric per evaluation
    assert [chart.split('aria-label="')[1].split('"')[0] for chart in charts] == [
        "loss",
        "contrastive",
        "lr",
        "grad_norm",
        "valid mrr",
    ]
    assert len(charts[0].split('points="')[1].split('"')[0].split()) == 5  # one point per step
    page = report_html(BUNDLE, METRICS, {"encoder": history})
    assert "<h2>Training: encoder</h2>" in page and page.count("<polyline") == 5
    assert "http" not in page.split("<body>")[1].replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )  # no assets
    assert training_curves({"steps": [], "evals": []}) == []  # nothing recorded: no empty section
    assert "Training:" not in report_html(BUNDLE, METRICS, {"encoder": {"steps": []}})


def test_a_long_curve_is_thinned_but_keeps_its_last_point() -> None:
    points = [(step, 1.0 / step) for step in range(1, 5001)]
    chart = line_chart_svg("loss", points)
    drawn = chart.split('points="')[1].split('"')[0].split()
    assert len(drawn) <= 401 and "last 0.0002" in chart


def test_model_card_says_how_to_use_it_how_it_was_trained_and_whose_code_it_holds() -> None:
    bundle = {
        **BUNDLE,
        "max_length": 128,
        "query_prefix": "",
        "default_files": {"query": "encoder.int8.onnx", "code": "encoder.int8.onnx"},
        "source": {
            "stage_configs": {
                "TrainEncoderConfig": {
                    "init_from": "minilm",
                    "lr": 5e-05,
                    "precision": "auto",
                    "unlisted": 1,
                },
                "TrainDecoderConfig": {"size": "tiny", "max_steps": 1500},
            }
        },
    }
    metrics = {**METRICS, "train_encoder": {"steps": 10, "precision": "fp16"}}
    card = model_card(bundle, metrics)
    hyperparameters = card.split("## Hyperparameters")[1].split("## ")[0]
    assert (
        "| encoder | lr | 5e-05 |" in hyperparameters and "| decoder | max_steps | 1500 |" in hyperparameters
    )
    assert "| encoder | precision | auto |" in hyperparameters  # as asked; the Model table says what it was
    assert "| training precision | fp16 |" in card.split("## Model")[1].split("## ")[0]
    assert "| encoder | init_from | minilm |" in hyperparameters and "unlisted" not in hyperparameters
    usage = card.split("## Usage")[1].split("## Intended use")[0]
    assert "semcode search ./bundle" in usage and 'SentenceTransformer("./bundle/encoder")' in usage
    assert 'ort.InferenceSession("./bundle/encoder.int8.onnx")' in usage and "enable_truncation(128)" in usage
    assert "licences apply" in card.split("## Data and licences")[1]
    # Without recorded configs there is no empty table.
    assert "## Hyperparameters" not in model_card(BUNDLE, METRICS)


def test_report_has_a_per_rank_table_of_each_training_stage() -> None:
    ranks = [
        {"rank": 0, "steps": 12, "items_per_second": 1510.25, "mean_loss": 0.5, "data_wait_share": 0.031, "peak_rss_mib": 2048.4},
        {"rank": 1, "steps": 12, "items_per_second": 1402.0, "mean_loss": 0.52, "data_wait_share": 0.05, "peak_rss_mib": 2001.0},
    ]  # fmt: skip
    metrics = {**METRICS, "train_encoder": {"ranks": ranks, "items_per_second_spread": 1.077}}
    page = report_html(BUNDLE, metrics)
    table = page.split("<h2>Workers: train_encoder</h2>")[1].split("<h2>")[0]
    assert "items/s max/min 1.077" in table
    assert "<td>1,510.2</td>" in table and "<td>3.1%</td>" in table and "<td>2,048</td>" in table
    assert "Workers: train_decoder" not in page  # no ranks recorded: no empty section


def test_report_shows_a_handful_of_decoder_samples_best_decoding_docstrings_first() -> None:
    def sample(source: str, decoding: str, index: int, parses: bool) -> dict:
        return {"from": source, "decoding": decoding, "query": f"q{index} <b>", "generated": f"def f{index}(): <x>", "parses": parses}  # fmt: skip

    samples = [sample("code", "best_of_8", 1, True), sample("query", "greedy", 2, True)]
    samples += [sample("query", "best_of_8", i, i % 2 == 0) for i in range(3, 9)]
    page = report_html(BUNDLE, METRICS, samples=samples)
    section = page.split("<h2>Decoder samples (best_of_8)</h2>")[1].split("<h2>")[0]
    assert re.findall(r"<td>(q\d) &lt;b&gt;</td>", section) == ["q3", "q4", "q5", "q6"]  # escaped, 4 shown
    assert "def f3(): &lt;x&gt;" in section and section.count("does not parse") == 2
    assert "Decoder samples" not in report_html(BUNDLE, METRICS)


def test_small_values_keep_their_digits_and_fact_tables_have_no_empty_header() -> None:
    from semcode.report import _number

    assert _number(5e-05) == "5e-05" and _number(5e-05, 3) == "5e-05"  # a learning rate, not 0.0000
    assert _number(0.7669) == "0.7669" and _number(-0.0109) == "-0.0109" and _number(0.0) == "0.0000"
    page = report_html(BUNDLE, METRICS)
    assert "<thead><tr><th></th><th></th></tr></thead>" not in page


def test_model_card_and_report_show_the_everyday_suite_per_system_and_form() -> None:
    def scores(s1: float, s3: float, s10: float, mrr: float, n: int) -> dict:
        return {"success@1": s1, "success@3": s3, "success@10": s10, "mrr@10": mrr, "n_queries": n}

    gap = {"mrr_difference": 0.05, "ci95_low": 0.01, "ci95_high": 0.09}
    everyday = {  # evaluate's layout: one protocol, "stdlib"
        "stdlib": {"model": scores(0.4, 0.6, 0.8, 0.5, 4), "naive": scores(0.2, 0.5, 0.75, 0.35, 4)},
        "by_form": {
            "keyword": {"n_queries": 2, "stdlib": {"model": scores(0.5, 0.5, 1.0, 0.6, 2)}},
            "question": {"n_queries": 2, "stdlib": {"model": scores(0.25, 0.75, 0.5, 0.4, 2)}},
        },
        "model_vs": {"stdlib": {"naive": gap}},
        "hybrid_vs": {"stdlib": {"model": {"mrr_difference": -0.01, "ci95_low": -0.03, "ci95_high": 0.0}}},
        "coverage": {"covered": 3, "n_queries": 4},
        "n_queries": 4,
        "n_candidates": 120,
        "document": "name+doc+code",
    }
    metrics = {"evaluate": {"suites": {**METRICS["evaluate"]["suites"], "everyday": everyday}}}
    assert metric_rows(metrics) == metric_rows(METRICS)  # no csn or full protocol: not in the MRR tables
    assert ["everyday", "stdlib", "model - naive", "+0.0500", "+0.0100 .. +0.0900"] in gap_rows(metrics)
    assert ["everyday", "stdlib", "hybrid - model", "-0.0100", "-0.0300 .. +0.0000"] in gap_rows(metrics)

    card = model_card(BUNDLE, metrics)
    section = card.split("### Everyday queries")[1].split("## ")[0]
    assert "| queries | system | success@1 | success@3 | success@10 | MRR@10 |" in section
    assert "| all (4) | model | 0.4000 | 0.6000 | 0.8000 | 0.5000 |" in section
    assert "| all (4) | naive | 0.2000 | 0.5000 | 0.7500 | 0.3500 |" in section
    assert "| question (2) | model | 0.2500 | 0.7500 | 0.5000 | 0.4000 |" in section
    assert "4 queries among 120 candidates" in section and "3 of them have an accepted answer" in section
    assert "hybrid - model MRR@10 -0.0100 (95% -0.0300 .. +0.0000)" in section

    page = report_html(BUNDLE, metrics)
    section = page.split("<h2>Evaluation: everyday queries</h2>")[1].split("<h2>")[0]
    assert (
        "<td>keyword (2)</td><td>model</td><td>0.5000</td><td>0.5000</td><td>1.0000</td><td>0.6000</td>"
        in section
    )
    assert "Everyday" not in model_card(BUNDLE, METRICS) and "everyday queries" not in report_html(
        BUNDLE, METRICS
    )


def test_suites_evaluate_left_out_are_named_with_why() -> None:
    why = "too few queries to evaluate: 0 queries in pairs/test, min_queries 1"
    metrics = {"evaluate": {**METRICS["evaluate"], "skipped": {"test": why}}}
    assert f"Not evaluated: test ({why})" in model_card(BUNDLE, metrics)
    assert f"<p>Not evaluated: test ({why})</p>" in report_html(BUNDLE, metrics)
    assert "Not evaluated" not in report_html(BUNDLE, METRICS)

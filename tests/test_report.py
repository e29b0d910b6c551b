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

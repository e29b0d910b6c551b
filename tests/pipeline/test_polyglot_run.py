"""The whole pipeline on code that is not Python: `semcode run --preset tiny` over small Go, Java and Ruby
repositories the test writes (slow: a full tiny run, about three minutes on two cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semcode.pipeline import local

pytestmark = pytest.mark.slow

VERBS = ["parse", "render", "count", "merge", "split", "load", "store", "check", "format", "scale"]
NOUNS = ["header", "token", "record", "buffer", "config", "route", "vector", "message"]


def go_function(verb: str, noun: str) -> str:
    name = verb.capitalize() + noun.capitalize()
    return (
        f"// {name} will {verb} the {noun} given and return the resulting {noun} value.\n"
        f"func {name}(items []string, limit int) []string {{\n"
        f"\tout := make([]string, 0, limit)\n"
        f"\tfor _, item := range items {{\n"
        f'\t\tif len(out) < limit && item != "{noun}" {{\n'
        f'\t\t\tout = append(out, "{verb}:"+item)\n'
        f"\t\t}}\n\t}}\n\treturn out\n}}\n"
    )


def java_method(verb: str, noun: str) -> str:
    name = verb + noun.capitalize()
    return (
        f"    /**\n     * Will {verb} every {noun} in the list and return how many were kept.\n"
        f"     * @param items the {noun}s\n     */\n"
        f"    public static int {name}(java.util.List<String> items, int limit) {{\n"
        f"        int kept = 0;\n        for (String item : items) {{\n"
        f'            if (kept < limit && !item.equals("{noun}")) {{\n                kept++;\n            }}\n'
        f"        }}\n        return kept;\n    }}\n"
    )


def ruby_method(verb: str, noun: str) -> str:
    return (
        f"  # Will {verb} each {noun} of the list and keep at most limit of them.\n"
        f"  def {verb}_{noun}(items, limit)\n"
        f"    kept = []\n    items.each do |item|\n"
        f'      kept << "{verb}:#{{item}}" if kept.size < limit && item != "{noun}"\n'
        f"    end\n    kept\n  end\n"
    )


def write_repositories(root: Path) -> list[str]:
    """Four repositories per language, ten documented functions each; returns their dir: sources."""
    sources = []
    for language in ("go", "java", "ruby"):
        for r in range(4):
            repo = root / f"{language}_repo{r}"
            repo.mkdir(parents=True)
            pairs = [(verb, noun) for verb in VERBS for noun in NOUNS][r * 10 : r * 10 + 10]
            if language == "go":
                body = "package demo\n\n" + "\n".join(go_function(v, n) for v, n in pairs)
                (repo / "demo.go").write_text(body)
            elif language == "java":
                body = "\n".join(java_method(v, n) for v, n in pairs)
                (repo / "Demo.java").write_text(f"package demo;\n\npublic class Demo{r} {{\n{body}}}\n")
            else:
                body = "\n".join(ruby_method(v, n) for v, n in pairs)
                (repo / "demo.rb").write_text(f"class Demo{r}\n{body}end\n")
            sources.append(f"dir:{repo}")
    return sources


def test_the_tiny_pipeline_runs_on_go_java_and_ruby(tmp_path: Path) -> None:
    sources = write_repositories(tmp_path / "code")
    argv = ["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--run-id", "polyglot"]
    argv += [arg for source in sources for arg in ("--source", source)]
    argv += ["--param", "evaluate_suites=[test]"]
    assert local.main(argv) == 0
    run_dir = tmp_path / "runs" / "polyglot"
    manifest = json.loads(next(run_dir.glob("artifacts/*/ingest/pairs/manifest.json")).read_text())
    assert {"go", "java", "ruby"} <= set(manifest["languages"])
    bundle = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert bundle["name"]

"""Component ingest: sources -> pairs (train/valid/test) and the code corpus (semcode.stages.ingest)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    pairs: Output[Dataset],
    corpus: Output[Dataset],
    metrics: Output[Metrics],
    sources: list,
    languages: list,
    max_files_per_source: int,
    corpus_near_dup: bool,
    workers: int,
):
    """Extract, deduplicate and split (query, code) pairs and a code corpus from sources.

    Args:
        pairs: train/, valid/, test/ Parquet shards, with manifest.json and config.json beside them.
        corpus: every extracted function, the code to index and to train the tokenizer on.
        metrics: counts for the KFP UI (pairs, corpus rows, split sizes).
        sources: source specs KIND:LOCATION, e.g. python:stdlib, dir:s3://bucket/repo.
        languages: languages read from dir: and JSONL sources, e.g. [go, java] ([] = all ten).
        max_files_per_source: read at most this many files per source (0 = all).
        corpus_near_dup: also remove near duplicates from the corpus.
        workers: processes that parse source files.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from semcode import config
    from semcode.components.scalars import save_metrics_file
    from semcode.stages import ingest as stage

    stage_config = config.from_dict(
        stage.IngestConfig,
        {
            "sources": sources,
            "languages": languages,
            "max_files_per_source": max_files_per_source,
            "corpus_near_dup": corpus_near_dup,
            "workers": workers,
        },
        source="ingest component",
    )
    with tempfile.TemporaryDirectory(prefix="semcode-ingest-") as scratch:
        manifest = stage.run(stage_config, scratch)
        # One artifact per consumer: the corpus on its own, everything else with the pairs.
        shutil.move(Path(scratch) / "corpus", corpus.path)
        shutil.move(Path(scratch) / "pairs", pairs.path)
        for entry in Path(scratch).iterdir():  # manifest.json, config.json, eval/
            shutil.move(entry, Path(pairs.path) / entry.name)

    for name in ("pairs", "corpus_rows", "eval_rows", "files_seen", "functions_found"):
        metrics.log_metric(name, manifest["totals"][name])
    for split, size in manifest["split"]["sizes"].items():
        metrics.log_metric(f"pairs_{split}", size)
    save_metrics_file(metrics)

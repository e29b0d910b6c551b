"""Component index: code + an encoder that exists -> an index-only bundle, no training; the update of a
previous index when it was made with the same encoder and settings (semcode.stages.index.refresh)."""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def index(
    bundle: Output[Model],
    metrics: Output[Metrics],
    encoder: str,
    sources: list,
    previous: str,
    name: str,
    version: str,
    languages: list,
    max_file_bytes: int,
    max_line_chars: int,
    max_code_chars: int,
    workers: int,
    document: str,
    max_length: int,
    factory: str,
    recall_queries: int,
    threads: int,
    seed: int,
):
    """Index every definition of the sources with an existing encoder (or update the previous index).

    Args:
        bundle: the index-only bundle: the encoder's files, the FAISS and BM25 indexes, bundle.json.
        metrics: definitions searchable, embedded and (an update) unchanged, changed, added, removed.
        encoder: a release bundle (folder, registry version or <registry>/<name>/latest; local or s3://) or minilm.
        sources: code to index, KIND:LOCATION, e.g. dir:s3://bucket/repo.
        previous: an index-only bundle to update ('' = none; a latest pointer not published yet = none).
        name: the bundle's name ('' = from the first dir: source).
        version: the bundle's version ('' = UTC time and a short hash).
        languages: languages read from dir: and JSONL sources ([] = all).
        max_file_bytes: skip source files bigger than this.
        max_line_chars: skip source files with a longer line.
        max_code_chars: skip definitions longer than this (0 = no limit).
        workers: processes that parse files.
        document: what each definition is embedded and BM25-indexed as.
        max_length: tokens per search document (0 = the encoder's max_length).
        factory: FAISS index factory string ('' = chosen by size).
        recall_queries: doc comments that measure recall@10 and latency.
        threads: ONNX Runtime threads (0 = every core).
        seed: seed of the recall sample and of any index training.
    """
    from semcode import config
    from semcode.components.scalars import save_metrics_file
    from semcode.stages import index as stage

    stage_config = config.from_dict(
        stage.IndexConfig,
        {
            "name": name,
            "version": version,
            "languages": languages,
            "max_file_bytes": max_file_bytes,
            "max_line_chars": max_line_chars,
            "max_code_chars": max_code_chars,
            "workers": workers,
            "document": document,
            "max_length": max_length,
            "factory": factory,
            "recall_queries": recall_queries,
            "threads": threads,
            "seed": seed,
        },
        source="index component",
    )
    result = stage.refresh(stage_config, encoder, sources, bundle.path, previous=previous)
    for key, value in result["source"]["update"].items():
        if isinstance(value, int | float):
            metrics.log_metric(key, value)
    save_metrics_file(metrics)

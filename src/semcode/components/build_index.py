"""Component build_index: the embedded corpus shards + encoder -> FAISS index with its metadata
(semcode.stages.build_index)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_index(
    encoder: Input[Model],
    onnx: Input[Model],
    embedded: Input[list[Artifact]],
    pairs: Input[Dataset],
    index: Output[Artifact],
    metrics: Output[Metrics],
    factory: str,
    max_corpus: int,
    whole_sources: list,
    recall_queries: int,
    runtime: str,
    max_length: int,
    ivf_on_disk: bool,
):
    """Build a FAISS index over the embedded corpus shards: trained once on a sample, every shard added.

    Args:
        encoder: train_encoder's output.
        onnx: export_onnx's output: the onnx runtimes run its files (the bundle's) as they are.
        embedded: embed_corpus's outputs, every shard of the run (dsl.Collected over the fan-out).
        pairs: ingest's pairs; recall and latency use the queries of their test split.
        index: index.faiss (and index.ivfdata), index_meta.parquet, bm25/, metrics.json, config.json.
        metrics: recall@10 against exact search, search latency, index size.
        factory: FAISS index factory string ('' = chosen by corpus size).
        max_corpus: index at most this many corpus rows (0 = all).
        whole_sources: sources indexed whole under max_corpus; the others share what is left.
        recall_queries: queries for recall@10 and latency.
        runtime: the shards' runtime; the recall queries are embedded with it: torch, or onnx-int8 / onnx-fp32.
        max_length: tokens per search document embedded (0 = the encoder\'s own limit).
        ivf_on_disk: an IVF index's inverted lists in index.ivfdata, mapped by search (indexes beyond memory).
    """
    import os

    from semcode import config
    from semcode.components.scalars import save_metrics_file
    from semcode.stages import build_index as stage

    stage_config = config.from_dict(
        stage.BuildIndexConfig,
        {
            "factory": factory,
            "max_corpus": max_corpus,
            "whole_sources": whole_sources,
            "recall_queries": recall_queries,
            "runtime": runtime,
            "max_length": max_length,
            "ivf_on_disk": ivf_on_disk,
        },
        source="build_index component",
    )
    result = stage.run(
        stage_config,
        os.path.join(encoder.path, "encoder"),
        None,
        index.path,
        pairs_dir=pairs.path,
        onnx_dir=onnx.path,
        shard_dirs=[shard.path for shard in embedded],
    )
    metrics.log_metric("ntotal", result["ntotal"])
    metrics.log_metric("recall@10", result["recall@10"])
    metrics.log_metric("index_file_bytes", result["index_file_bytes"])
    for name, value in result["search_latency"].items():
        if isinstance(value, int | float):
            metrics.log_metric(f"search_latency.{name}", value)
    save_metrics_file(metrics)

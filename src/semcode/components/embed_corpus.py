"""Components plan_corpus_shards and embed_corpus: the corpus cut into shards, each embedded on a GPU pod
(semcode.stages.embed_corpus); build_index then indexes the collected shards."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from semcode.components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_corpus_shards(corpus: Input[Dataset], shards: int, shard_rows: int, max_corpus: int) -> list:
    """The shards the pipeline embeds the corpus in, {"shard": k, "shards": N} each: a dsl.ParallelFor's items.

    Args:
        corpus: ingest's corpus.
        shards: shard count (0 = one per shard_rows selected rows).
        shard_rows: selected corpus rows per shard when shards is 0.
        max_corpus: index at most this many corpus rows (0 = all): the rows the shards share.
    """
    from semcode import config
    from semcode.stages import embed_corpus as stage

    stage_config = config.from_dict(
        stage.BuildIndexConfig,
        {"shards": shards, "shard_rows": shard_rows, "max_corpus": max_corpus},
        source="plan_corpus_shards component",
    )
    return stage.plan(stage_config, corpus.path)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def embed_corpus(
    encoder: Input[Model],
    onnx: Input[Model],
    corpus: Input[Dataset],
    embeddings: Output[Artifact],
    shard: int,
    shards: int,
    gpu_count: int,
    max_corpus: int,
    whole_sources: list,
    runtime: str,
    max_length: int,
):
    """Embed one shard of the corpus with the encoder's code tower (build_index's row selection, split
    into contiguous shards).

    Args:
        encoder: train_encoder's output.
        onnx: export_onnx's output: the onnx runtimes run its files (the bundle's) as they are.
        corpus: ingest's corpus.
        embeddings: embeddings.npy, index_meta.parquet, manifest.json, config.json of this shard.
        shard: this shard's number, 0..shards-1.
        shards: the shard count.
        gpu_count: GPUs this pod asks for; 0 = embed on the CPU. (Passing it also carries the parameter
            into the ParallelFor: KFP's compiler does not pass one used only by set_accelerator_limit.)
        max_corpus: index at most this many corpus rows (0 = all).
        whole_sources: sources indexed whole under max_corpus; the others share what is left.
        runtime: torch (bf16 on a GPU), or onnx-int8 / onnx-fp32 (the bundle's files, on the CPU).
        max_length: tokens per search document embedded (0 = the encoder\'s own limit).
    """
    import os

    from semcode import config
    from semcode.stages import embed_corpus as stage

    stage_config = config.from_dict(
        stage.BuildIndexConfig,
        {
            "max_corpus": max_corpus,
            "whole_sources": whole_sources,
            "runtime": runtime,
            "max_length": max_length,
            "device": "auto" if gpu_count > 0 else "cpu",
        },
        source="embed_corpus component",
    )
    stage.run(
        stage_config,
        os.path.join(encoder.path, "encoder"),
        corpus.path,
        embeddings.path,
        shard,
        shards,
        onnx_dir=onnx.path,
    )

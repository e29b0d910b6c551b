"""Components of ingest: sources -> pairs (train/valid/test) and the code corpus (semcode.stages.ingest).

``ingest`` is the whole stage in one task. The sharded form is three components the pipeline wires as a
fan-out: ``ingest_shard_indices`` (the list a ``dsl.ParallelFor`` iterates over), ``ingest_shard`` (one
shard's rows and MinHash signatures) and ``ingest_merge`` (every shard, collected with ``dsl.Collected``:
one global deduplication, the split, the same pairs and corpus artifacts as ``ingest``).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

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
    allow_licenses: list,
    deny_licenses: list,
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
        allow_licenses: keep only rows whose licence these SPDX ids meet ([] = all; unknown: none found).
        deny_licenses: drop rows whose licence needs one of these SPDX ids.
    """
    import tempfile

    from semcode import config
    from semcode.components.ingest_outputs import place_outputs
    from semcode.stages import ingest as stage

    stage_config = config.from_dict(
        stage.IngestConfig,
        {
            "sources": sources,
            "languages": languages,
            "max_files_per_source": max_files_per_source,
            "corpus_near_dup": corpus_near_dup,
            "workers": workers,
            "allow_licenses": allow_licenses,
            "deny_licenses": deny_licenses,
        },
        source="ingest component",
    )
    with tempfile.TemporaryDirectory(prefix="semcode-ingest-") as scratch:
        manifest = stage.run(stage_config, scratch)
        place_outputs(scratch, manifest, pairs, corpus, metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest_shard_indices(shards: int) -> list:
    """The shard numbers 0..shards-1 that the ingest fan-out iterates over.

    Args:
        shards: how many shards every source's files are split into.
    """
    from semcode.stages import ingest as stage

    return stage.shard_indices(shards)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest_shard(
    shard: Output[Dataset],
    index: int,
    shards: int,
    sources: list,
    languages: list,
    max_files_per_source: int,
    corpus_near_dup: bool,
    workers: int,
    allow_licenses: list,
    deny_licenses: list,
):
    """Read one shard of every source: its rows (not yet deduplicated) and their MinHash signatures.

    Args:
        shard: pairs/corpus/eval Parquet files with order keys and signatures, and shard.json.
        index: this shard, 0..shards-1.
        shards: how many shards every source's files are split into (by a stable hash of the path).
        sources: source specs KIND:LOCATION, e.g. python:stdlib, text:s3://bucket/the-stack/.
        languages: languages read from dir:, JSONL and text: sources ([] = all ten).
        max_files_per_source: read at most this many files per source (0 = all), sampled before sharding.
        corpus_near_dup: also sign the corpus, for its near-duplicate removal in the merge.
        workers: processes that parse source files.
        allow_licenses: keep only rows whose licence these SPDX ids meet ([] = all; unknown: none found).
        deny_licenses: drop rows whose licence needs one of these SPDX ids.
    """
    from semcode import config
    from semcode.stages import ingest as stage

    stage_config = config.from_dict(
        stage.IngestConfig,
        {
            "sources": sources,
            "languages": languages,
            "max_files_per_source": max_files_per_source,
            "corpus_near_dup": corpus_near_dup,
            "workers": workers,
            "allow_licenses": allow_licenses,
            "deny_licenses": deny_licenses,
            "shards": shards,
        },
        source="ingest_shard component",
    )
    stage.run_shard(stage_config, index, shard.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest_merge(
    shards: Input[list[Dataset]],
    pairs: Output[Dataset],
    corpus: Output[Dataset],
    metrics: Output[Metrics],
    sources: list,
    languages: list,
    max_files_per_source: int,
    corpus_near_dup: bool,
    workers: int,
    shard_count: int,
    allow_licenses: list,
    deny_licenses: list,
):
    """Merge the ingest shards: one global exact + near-duplicate pass, the split, the manifest summed.

    Args:
        shards: every ingest_shard output (dsl.Collected over the fan-out).
        pairs: train/, valid/, test/ Parquet shards, with manifest.json and config.json beside them.
        corpus: every extracted function, the code to index and to train the tokenizer on.
        metrics: counts for the KFP UI (pairs, corpus rows, split sizes).
        sources: the source specs the shards read.
        languages: the languages the shards read.
        max_files_per_source: the shards' file limit per source.
        corpus_near_dup: also remove near duplicates from the corpus.
        workers: processes; 2 or more deduplicate the corpus beside the pairs.
        shard_count: how many shards there are (all must be present).
        allow_licenses: the shards' licence allow list.
        deny_licenses: the shards' licence deny list.
    """
    import tempfile

    from semcode import config
    from semcode.components.ingest_outputs import place_outputs
    from semcode.stages import ingest as stage

    stage_config = config.from_dict(
        stage.IngestConfig,
        {
            "sources": sources,
            "languages": languages,
            "max_files_per_source": max_files_per_source,
            "corpus_near_dup": corpus_near_dup,
            "workers": workers,
            "allow_licenses": allow_licenses,
            "deny_licenses": deny_licenses,
            "shards": shard_count,
        },
        source="ingest_merge component",
    )
    with tempfile.TemporaryDirectory(prefix="semcode-ingest-") as scratch:
        manifest = stage.merge(stage_config, [shard.path for shard in shards], scratch)
        place_outputs(scratch, manifest, pairs, corpus, metrics)

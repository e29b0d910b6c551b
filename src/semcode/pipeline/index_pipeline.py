"""The semcode index pipeline (KFP v2): code in, a searchable index published, no training.

The second loop beside the training pipeline (train_pipeline.py): a team that has a model (a release in
the model registry, or the zero-shot start) keeps the index of its code fresh on every merge or on a
schedule, in minutes, without retraining (docs/ci-retraining.md shows both loops). Steps:

    1 index (the previous index updated when it was made with the same encoder and settings: only the
      definitions whose search document changed are embedded; else every definition)
    -> 2 publish to the index registry (only when one is given)

``index_previous`` names the index to update, usually the one this pipeline publishes,
``<publish_registry>/<index_name>/latest``: nothing published there yet (the first run), another encoder
(a new model was released: ``index_encoder`` a ``latest`` pointer follows it) or other settings give a new
index instead (semcode.stages.index.refresh). The index runs the encoder's ONNX files on the CPU: one task,
no GPU; the same cluster settings as the training pipeline's CPU stages (requests and limits, the S3
Secret, two retries with backoff). The index task is not cached: its sources (a dir: on S3, a checkout)
change behind the same parameters; publish never is.

Parameters are the index stage's config fields as ``index_<key>`` (the defaults are the stage's, but
``index_name``: publish needs a name it can check), its inputs ``index_encoder``, ``index_sources`` and
``index_previous``, and ``publish_registry``. ``semcode compile`` writes index_pipeline.yaml beside this file;
``semcode submit --pipeline index`` uploads and starts it; ``semcode run --pipeline index`` runs it here
through kfp.local.
"""

from kfp import dsl
from kfp.dsl import Model

from semcode.components.index import index
from semcode.components.publish import publish
from semcode.pipeline.train_pipeline import CPU_STAGE, LIGHT_STAGE, on_cluster

PIPELINE_NAME = "semcode-index"


@dsl.pipeline(
    name=PIPELINE_NAME, description="Index code with a model that exists (no training) and publish it."
)
def index_pipeline(
    index_encoder: str = "minilm",
    index_sources: list = [],  # noqa: B006 (KFP reads defaults here)
    index_previous: str = "",
    index_name: str = "code-index",
    index_version: str = "",
    index_languages: list = [],  # noqa: B006
    index_max_file_bytes: int = 1_000_000,
    index_max_line_chars: int = 10_000,
    index_max_code_chars: int = 8000,
    index_workers: int = 1,
    index_document: str = "name+doc+code",
    index_max_length: int = 0,
    index_factory: str = "",
    index_recall_queries: int = 100,
    index_threads: int = 0,
    index_seed: int = 0,
    publish_registry: str = "",
    publish_keep_versions: int = 0,
    s3_secret_name: str = "semcode-s3",
) -> Model:
    """Index code with a model that exists (no training) and publish the index.

    Args:
        index_encoder: The model: a release bundle (folder, registry version or <registry>/<name>/latest, e.g. s3://models/registry/semcode/latest; local or s3://) or minilm (the zero-shot start).
        index_sources: Code to index, KIND:LOCATION: dir:PATH (a checkout, local or s3://), csn:PATH, text:PATH, python:stdlib, ...
        index_previous: The index to update, e.g. <publish_registry>/<index_name>/latest ('' = index anew; nothing published there yet, another encoder or other settings: anew).
        index_name: The index bundle's name: the registry folder <publish_registry>/<index_name>/.
        index_version: The index bundle's version ('' = UTC time and a short hash of what it holds).
        index_languages: Read only these languages from dir: and JSONL sources ([] = all).
        index_max_file_bytes: Skip source files bigger than this (generated code).
        index_max_line_chars: Skip source files with a longer line (minified code, data).
        index_max_code_chars: Skip definitions longer than this many characters (0 = no limit).
        index_workers: Processes that parse files.
        index_document: What each definition is embedded and BM25-indexed as (name+doc+code, doc+code or code).
        index_max_length: Tokens per search document at most (0 = the encoder's max_length).
        index_factory: FAISS index factory string ('' = chosen by the number of definitions).
        index_recall_queries: Doc comments, sampled, that measure the index's recall@10 and latency.
        index_threads: Threads running the ONNX encoder (0 = every core of the node).
        index_seed: Seed of the recall sample and of any index training.
        publish_registry: Index registry to publish to, a local folder or s3://bucket/prefix ('' = not published).
        publish_keep_versions: Keep the N most recently published versions of the index in the registry, removing older ones (at least 2: latest and the one it replaced; 0 = keep all): a scheduled re-index publishes one a run.
        s3_secret_name: Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) for s3:// paths.
    """
    # 1. index: the previous index updated (only changed definitions embedded), or a new one
    index_task = index(
        encoder=index_encoder,
        sources=index_sources,
        previous=index_previous,
        name=index_name,
        version=index_version,
        languages=index_languages,
        max_file_bytes=index_max_file_bytes,
        max_line_chars=index_max_line_chars,
        max_code_chars=index_max_code_chars,
        workers=index_workers,
        document=index_document,
        max_length=index_max_length,
        factory=index_factory,
        recall_queries=index_recall_queries,
        threads=index_threads,
        seed=index_seed,
    )
    on_cluster(index_task, CPU_STAGE, s3_secret_name)
    index_task.set_caching_options(False)  # the sources change behind the same parameters

    # 2. publish: to the index registry, when one is given
    with dsl.If(publish_registry != "", name="registry-given"):
        publish_task = publish(
            bundle=index_task.outputs["bundle"],
            registry=publish_registry,
            name=index_name,
            keep_versions=publish_keep_versions,
        )
        on_cluster(publish_task, LIGHT_STAGE, s3_secret_name)
        publish_task.set_caching_options(False)  # publishing is a side effect

    return index_task.outputs["bundle"]

"""Component evaluate: encoder -> retrieval metrics beside BM25 and a baseline (semcode.stages.evaluate)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    encoder: Input[Model],
    onnx: Input[Model],
    pairs: Input[Dataset],
    corpus: Input[Dataset],
    index: Input[Artifact],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    suites: list,
    max_queries: int,
    n_distractors: int,
    baseline_encoder: str,
    runtime: str,
    everyday_max_length: int,
):
    """Retrieval metrics (MRR, Recall@1/5/10, NDCG@10; the everyday suite's success@k) of the encoder, with
    BM25 on the same candidates.

    Args:
        encoder: train_encoder's output.
        onnx: export_onnx's output: the onnx runtimes run its files (the bundle's) as they are.
        pairs: ingest's pairs; their test split is the 'test' suite.
        corpus: ingest's corpus; the everyday suite ranks its python:stdlib rows.
        index: build_index's output over that corpus: the everyday model pass takes its vectors.
        evaluation: metrics.json (every suite, protocol and system) and config.json.
        metrics: every suite.protocol.system.metric as a KFP metric.
        suites: suites to evaluate: test, humaneval, cosqa, polyglot (the held-out repositories).
        max_queries: at most this many queries per suite (0 = all).
        n_distractors: distractors per query in the csn protocol.
        baseline_encoder: also evaluate this encoder (alias or directory) as zero_shot ('' = none).
        runtime: torch, or onnx-int8 / onnx-fp32 (the encoders exported as the bundle's is; faster on CPU).
        everyday_max_length: tokens per everyday candidate, build_index's (0 = the encoder's own limit).
    """
    import os

    from semcode import config
    from semcode.components.scalars import save_metrics_file
    from semcode.stages import evaluate as stage

    stage_config = config.from_dict(
        stage.EvaluateConfig,
        {
            "suites": suites,
            "max_queries": max_queries,
            "n_distractors": n_distractors,
            "runtime": runtime,
            "everyday_max_length": everyday_max_length,
        },
        source="evaluate component",
    )
    result = stage.run(
        stage_config,
        os.path.join(encoder.path, "encoder"),
        pairs.path,
        evaluation.path,
        baseline_encoder=baseline_encoder or None,
        onnx_dir=onnx.path,
        corpus_dir=corpus.path,
        index_dir=index.path,
    )
    for name, value in result["kfp_metrics"].items():
        metrics.log_metric(name, value)
    save_metrics_file(metrics)

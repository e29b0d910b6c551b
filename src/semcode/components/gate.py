"""Component gate: stage outputs -> release bundle, report, and the decision to publish (semcode.stages.gate)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gate(
    encoder: Input[Model],
    onnx: Input[Model],
    index: Input[Artifact],
    evaluation: Input[Artifact],
    pairs: Input[Dataset],
    tokenizer: Input[Model],
    bundle: Output[Model],
    report: Output[HTML],
    decision: Output[Artifact],
    metrics: Output[Metrics],
    model_card: Output[Markdown],
    name: str,
    registry: str,
    primary_metric: str,
    tolerance: float,
    require_int8_parity: bool,
    version: str,
    guarded_suites: list,
    zero_shot_regression: str,
    decoder: Input[Model] = None,
) -> bool:
    """Assemble the release bundle and compare the candidate with the registry's champion.

    Returns whether the candidate passed (the pipeline publishes only then). The bundle and report are
    written either way, so a refused candidate can be inspected.

    Args:
        encoder: train_encoder's output.
        onnx: export_onnx's output.
        index: build_index's output.
        evaluation: evaluate's output.
        pairs: ingest's pairs (their manifest goes into the bundle's metrics and model card).
        tokenizer: train_tokenizer's output (its metrics go into the bundle's metrics).
        decoder: train_decoder's output, when a decoder was trained.
        bundle: the release bundle.
        report: the bundle's report.html.
        decision: decision.json (passed, reasons, candidate, champion) and config.json.
        metrics: the decision's comparisons as numbers: candidate and champion per suite, their delta,
            passed (1/0), the int8 MRR loss (KFP's run comparison shows them side by side).
        model_card: the bundle's model_card.md (the KFP UI renders it as Markdown).
        name: model name: the registry folder <registry>/<name>/.
        registry: registry holding the champion: a local folder or s3://bucket/prefix ('' = none).
        primary_metric: metric compared with the champion, suite/protocol/system/metric.
        tolerance: the candidate may be at most this much worse than the champion.
        require_int8_parity: refuse a candidate whose int8 encoder lost too much accuracy.
        version: version of the candidate bundle ('' = UTC timestamp + short hash of the weights).
        guarded_suites: suites (names or patterns) on which the candidate may not fall below zero-shot.
        zero_shot_regression: refuse, or warn (pass and say so), on such a regression.
    """
    import json
    import os
    import shutil

    from semcode import config
    from semcode.components.scalars import save_metrics_file
    from semcode.stages import gate as stage

    stage_config = config.from_dict(
        stage.GateConfig,
        {
            "name": name,
            "registry": registry,
            "primary_metric": primary_metric,
            "tolerance": tolerance,
            "require_int8_parity": require_int8_parity,
            "version": version,
            "guarded_suites": guarded_suites,
            "zero_shot_regression": zero_shot_regression,
        },
        source="gate component",
    )

    def read(folder: str, file_name: str) -> dict:
        with open(os.path.join(folder, file_name)) as handle:
            return json.load(handle)

    result = stage.run(
        stage_config,
        encoder.path,
        onnx.path,
        index.path,
        evaluation.path,
        decision.path,
        decoder_dir=None if decoder is None else decoder.path,
        extra_metrics={
            "ingest": read(pairs.path, "manifest.json"),
            "train_tokenizer": read(tokenizer.path, "metrics.json"),
            "train_encoder": read(encoder.path, "metrics.json"),
        },
    )
    shutil.move(os.path.join(decision.path, stage.BUNDLE_SUBDIR), bundle.path)
    shutil.copyfile(os.path.join(bundle.path, "report.html"), report.path)
    shutil.copyfile(os.path.join(bundle.path, "model_card.md"), model_card.path)
    for metric_name, value in stage.decision_scalars(result).items():
        metrics.log_metric(metric_name, value)
    save_metrics_file(metrics)
    return result["passed"]

"""Component export_onnx: encoder -> fp32 and int8 ONNX with parity and latency (semcode.stages.export_onnx)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export_onnx(
    encoder: Input[Model],
    pairs: Input[Dataset],
    onnx: Output[Model],
    metrics: Output[Metrics],
    max_mrr_loss: float,
    parity_texts: int,
    latency_repeats: int,
    max_test_queries: int,
):
    """Export the encoder to fp32 and int8 ONNX, with parity, test MRR and latency against torch.

    Args:
        encoder: train_encoder's output.
        pairs: ingest's pairs: valid rows for parity, the test split for MRR.
        onnx: the ONNX files, tokenizer.json, metrics.json, config.json.
        metrics: parity, MRR of fp32 vs int8, latency.
        max_mrr_loss: largest test MRR drop of int8 vs fp32 for int8 to be the default.
        parity_texts: validation rows encoded for parity.
        latency_repeats: timed calls per runner and shape.
        max_test_queries: the fp32 vs int8 MRR on at most this many test pairs, against their own codes (0 = all).
    """
    import os

    from semcode import config
    from semcode.components.scalars import save_metrics_file
    from semcode.stages import export_onnx as stage

    stage_config = config.from_dict(
        stage.ExportOnnxConfig,
        {
            "max_mrr_loss": max_mrr_loss,
            "parity_texts": parity_texts,
            "latency_repeats": latency_repeats,
            "max_test_queries": max_test_queries,
        },
        source="export_onnx component",
    )
    result = stage.run(stage_config, os.path.join(encoder.path, "encoder"), onnx.path, pairs_dir=pairs.path)
    for name, value in result["kfp_metrics"].items():
        metrics.log_metric(name, value)
    save_metrics_file(metrics)

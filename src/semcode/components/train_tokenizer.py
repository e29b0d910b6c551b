"""Component train_tokenizer: corpus -> byte-level BPE tokenizer (semcode.stages.train_tokenizer)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_tokenizer(
    corpus: Input[Dataset],
    pairs: Input[Dataset],
    tokenizer: Output[Model],
    vocab_size: int,
    min_frequency: int,
    fertility_rows: int,
    max_bytes: int,
):
    """Train a byte-level BPE tokenizer (HF tokenizers, transformers-loadable) on the corpus.

    Args:
        corpus: ingest's corpus.
        pairs: ingest's pairs; fertility is measured on their test split.
        tokenizer: tokenizer.json (+ transformers files), metrics.json, config.json.
        vocab_size: vocabulary size.
        min_frequency: a pair of tokens must occur at least this often to be merged.
        fertility_rows: at most this many rows for the fertility measurement.
        max_bytes: stop reading after this many bytes of text (0 = no limit).
    """
    from semcode import config
    from semcode.stages import train_tokenizer as stage

    stage_config = config.from_dict(
        stage.TrainTokenizerConfig,
        {
            "vocab_size": vocab_size,
            "min_frequency": min_frequency,
            "fertility_rows": fertility_rows,
            "max_bytes": max_bytes,
        },
        source="train_tokenizer component",
    )
    stage.run(stage_config, corpus.path, tokenizer.path, pairs_dir=pairs.path)

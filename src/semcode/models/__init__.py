"""Models: the code search encoder (``semcode.models.encoder``)."""

from semcode.models.encoder import (
    ENCODER_SIZES,
    CodeSearchEncoder,
    EncoderTower,
    build_encoder,
    encode_texts,
    load_encoder,
    load_hf_tokenizer,
    load_pretrained,
    resolve_checkpoint,
)

__all__ = [
    "ENCODER_SIZES",
    "CodeSearchEncoder",
    "EncoderTower",
    "build_encoder",
    "encode_texts",
    "load_encoder",
    "load_hf_tokenizer",
    "load_pretrained",
    "resolve_checkpoint",
]

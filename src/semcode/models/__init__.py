"""Models: the code search encoder (``semcode.models.encoder``, its names re-exported here) and the code
decoder that writes code from the encoder's embeddings (``semcode.models.decoder``, imported from there)."""

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

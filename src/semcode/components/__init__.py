"""One thin KFP component per stage: a ``@dsl.component`` whose body calls ``semcode.stages.<stage>.run``.

A component only wires: it builds the stage's frozen config from its typed parameters (with
``semcode.config.from_dict``, which validates them), hands the stage local paths of its input
artifacts, and places what the stage wrote into its output artifacts. No ML logic lives here, and no
``packages_to_install``: the image (src/semcode/components/images.py) already holds semcode and its dependencies,
and kfp.local runs the same bodies in the current environment.

The artifacts, shared by every component (later stages follow the same layout):

    pairs      Dataset   ingest's pairs/: train/, valid/, test/ Parquet shards; manifest.json and config.json
                         beside them (and eval/ when an evaluation-only source was ingested)
    corpus     Dataset   ingest's corpus/: the code to index and to train the tokenizer on
    tokenizer  Model     train_tokenizer's output (tokenizer.json, metrics.json, config.json)
    encoder    Model     train_encoder's output: the encoder itself is its encoder/ folder, with
                         history.json, metrics.json and config.json beside it (checkpoints left out)
    evaluation Artifact  evaluate's output: metrics.json, config.json
    index      Artifact  build_index's output: index.faiss, index_meta.parquet, metrics.json
    onnx       Model     export_onnx's output: the ONNX files, tokenizer.json, metrics.json
    bundle     Model     the release bundle (semcode.bundle has the contract)
    decision   Artifact  gate's decision.json and config.json
    metrics    Metrics   scalars for the KFP UI (evaluate: every suite/protocol/system/metric)
    report     HTML      the bundle's report.html, shown in the KFP UI

Each component lives in its own module; import it from there (``from semcode.components.ingest import ingest``).
"""

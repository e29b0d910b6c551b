"""semcode: natural-language-to-code search models, trained end to end.

The module map, lowest layer first. A module imports only from its own layer or those below it
(tests/test_layers.py enforces it, lazy imports included, and that no imports go around a circle).

0. foundation, torch-free
   contract     the release bundle's stable names: files, tower kinds, precisions, runtimes, ONNX I/O
   config       frozen stage configs, presets (semcode/configs/*.yaml, package data), CLI flags
   progress     log lines and progress bars;  storage  local paths and s3:// (boto3)
1. library, importable and CPU-testable
   data/        sources, extraction, cleaning, splits, Parquet shards;  tokenizer  the BPE tokenizer
   models/      the encoder and the decoder;  losses  the contrastive loss;  train/  the DeepSpeed engine
   embed        an encoder spec -> an embedding function, every runtime (torch, ONNX Runtime)
   export       torch -> fp32 / int8 ONNX;  index  FAISS;  mining  hard negatives
   evaluation   retrieval metrics, BM25, paired intervals;  suites  the evaluation suites
   decoding     code from embeddings, and its metrics;  bundle  assemble, validate, publish a bundle
   report       the model card and report.html
2. what runs the library
   stages/      one module per pipeline stage: run(config, inputs..., out_dir) and main(argv)
   cluster/     inside the training pod: a Kubeflow Trainer TrainJob for multi-node training
   serve/       the bundle's readers: semcode search, semcode serve, semcode generate
3. components/  one thin KFP component per stage (wiring only)
4. pipeline/    the KFP pipeline (train_pipeline.py, compiled train_pipeline.yaml beside it) and its
                drivers: local (semcode run), compile, submit, params (preset <-> parameters)
5. cli          the ``semcode`` command, importing each subcommand only when it runs
"""

__version__ = "0.1.0"

import logging

# faiss's loader logs each instruction-set build it cannot find (avx512_spr, avx512, ...) at INFO with
# its exception; under kfp.local's INFO root logger those three lines reached every stage's console.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

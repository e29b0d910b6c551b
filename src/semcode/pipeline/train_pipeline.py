"""The semcode training pipeline (KFP v2): sources in, a gated release bundle out.

Steps, in the order the function below wires them:

    1 ingest -> 2 train_tokenizer -> 3 train_encoder (then 0..2 hard-negative rounds: mine_hard_negatives
    -> train_encoder continuing the encoder) -> 4 export_onnx -> 5 train_decoder and 6 build_index
    (independent of each other; 6 is plan_corpus_shards -> a dsl.ParallelFor of embed_corpus over the
    corpus shards on the GPU pool -> build_index over the dsl.Collected shards) -> 7 evaluate (after the
    index: the everyday suite's model pass takes the index's vectors of the rows it ranks instead of
    embedding them again) -> 8 gate -> 9 publish (only when the gate passed and a registry is given)

evaluate, train_decoder and build_index take export_onnx's files: with an onnx runtime (the local preset)
they run the very files the bundle ships instead of exporting the encoder again (the time that saves:
bench/RESULTS.md). With torch (the GPU presets) they only wait for it: export_onnx is minutes against
hours of training.

The same function runs on a cluster (``semcode compile`` writes train_pipeline.yaml beside this file for
the KFP UI; ``semcode submit`` uploads and starts it) and on one machine (``semcode run``: kfp.local's
SubprocessRunner, local files as the artifact store; the Kubernetes settings below have no effect there).

Parameters. Each stage parameter is named ``<section>_<key>``: the preset section (src/semcode/configs/*.yaml) and
the field of that stage's config, so a preset maps 1:1 onto parameters (semcode.pipeline.params does
it). Every key used in a preset is a parameter; fields that neither a preset nor an operator needs are
left at the stage's default. **The defaults are the stage config defaults** (what ``semcode <stage>``
uses without flags), not those of a preset: a preset is a set of overrides, here as on the command
line. publish has no parameters of its own: it uses the gate's ``registry`` and ``name``, so the two
never disagree. The cluster parameters (``gpu_count``, ``gpu_node_selector``, ``gpu_tolerations``,
``s3_secret_name``, ``num_nodes``, ``trainjob_runtime``) are not in presets.

Cluster settings, all in this module:

- train_encoder, mine_hard_negatives, train_decoder and every embed_corpus shard ask for ``gpu_count``
  nvidia.com/gpu, are scheduled on the GPU pool (the node selector and tolerations parameters) and get
  a memory-backed /dev/shm (PyTorch data loader workers and NCCL share memory through it; the
  container default is 64 MB);
- with ``num_nodes`` > 1 each train_encoder task submits a Kubeflow Trainer TrainJob that runs the same
  stage on ``num_nodes`` nodes (semcode.cluster.trainjob), follows it and collects its output; the task's own
  pod keeps its GPU request meanwhile (a KFP DAG cannot make a resource request depend on a parameter
  in a way kfp.local also runs);
- the CPU stages get modest requests and limits;
- at most ``EMBED_PARALLELISM`` embed_corpus shards run at once (``SEMCODE_EMBED_PARALLELISM`` when
  ``semcode compile`` runs, default 8): KFP fixes a ParallelFor's parallelism in the compiled YAML
  (``iteratorPolicy.parallelismLimit``), so it cannot be a run parameter; kfp.local runs at most two
  iterations at a time whatever it says;
- every task reads S3 credentials from the Kubernetes Secret ``s3_secret_name`` as environment
  variables: keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required), AWS_ENDPOINT_URL (MinIO,
  SeaweedFS; leave it out for AWS) and AWS_DEFAULT_REGION (optional). No value is in this file or
  the YAML;
- every task is retried twice on failure (a lost node, an S3 hiccup), with exponential backoff; with
  ``checkpoint_root`` the training tasks keep their checkpoints under ``<checkpoint_root>/<run id>/<task>``
  as they train and a retry continues from the newest one (SIGTERM, the notice before an eviction,
  writes one and exits non-zero); ``resume_run_id`` makes a new run continue an earlier run's;
- caching is on by default and switched off per run at submission (``enable_caching=False`` in
  ``create_run_from_pipeline_func`` / ``semcode submit --no-cache``; ``semcode run`` caches only with
  ``--cache``). A cached ingest reuses the sources as they were read before: a run on changed sources
  (e.g. scheduled retraining) must switch caching off. gate and publish are never cached: they read
  and write the registry, which changes between runs with the same inputs.
"""

import os
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Model, PipelineTask

from semcode.components.build_index import build_index
from semcode.components.embed_corpus import embed_corpus, plan_corpus_shards
from semcode.components.evaluate import evaluate
from semcode.components.export_onnx import export_onnx
from semcode.components.gate import gate
from semcode.components.images import GPU_IMAGE
from semcode.components.ingest import ingest, ingest_merge, ingest_shard, ingest_shard_indices
from semcode.components.mine_hard_negatives import mine_hard_negatives
from semcode.components.publish import publish
from semcode.components.train_decoder import train_decoder
from semcode.components.train_encoder import train_encoder
from semcode.components.train_tokenizer import train_tokenizer

PIPELINE_NAME = "semcode-train"

# Resources: (cpu request, cpu limit, memory request, memory limit).
CPU_STAGE = ("1", "4", "4Gi", "16Gi")  # ingest, tokenizer, evaluate, index, export
LIGHT_STAGE = ("500m", "2", "1Gi", "8Gi")  # gate and publish: copy files, read JSON
GPU_STAGE = (
    "4",
    "16",
    "32Gi",
    "96Gi",
)  # training, mining, the decoder, beside their GPUs; /dev/shm counts in its memory
SHM_SIZE = "16Gi"
GPU_RESOURCE = "nvidia.com/gpu"

EMBED_PARALLELISM = int(os.environ.get("SEMCODE_EMBED_PARALLELISM", "8"))  # shards embedded at once

RETRIES = 2
RETRY_BACKOFF = "10s"  # then 20 s: a retried pod waits for scheduling anyway

S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
S3_OPTIONAL_KEYS = {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION"}


def on_cluster(task: PipelineTask, resources: tuple[str, str, str, str], s3_secret_name: str) -> PipelineTask:
    """Requests and limits, S3 credentials from the Secret, retries: what every task gets."""
    cpu_request, cpu_limit, memory_request, memory_limit = resources
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    kubernetes.use_secret_as_env(task, secret_name=s3_secret_name, secret_key_to_env=S3_SECRET_KEYS)
    kubernetes.use_secret_as_env(
        task, secret_name=s3_secret_name, secret_key_to_env=S3_OPTIONAL_KEYS, optional=True
    )
    task.set_retry(num_retries=RETRIES, backoff_duration=RETRY_BACKOFF, backoff_factor=2)
    return task


def on_gpu_pool(
    task: PipelineTask, gpu_count: int, node_selector: dict, tolerations: list, s3_secret_name: str
) -> PipelineTask:
    """What every task gets (on_cluster, with GPU_STAGE resources), plus GPUs, the GPU node pool and a
    memory-backed /dev/shm."""
    on_cluster(task, GPU_STAGE, s3_secret_name)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpu_count)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
    )
    return task


def ingest_step(settings: dict, shards: Any, s3_secret_name: Any) -> tuple[Any, Any]:
    """Step 1 of the pipeline: the (pairs, corpus) artifacts of one ingest task when ``shards`` is 1, else
    of the fan-out (ingest_shard_indices -> a dsl.ParallelFor of ingest_shard -> ingest_merge over the
    dsl.Collected shards). ``settings`` are the ingest parameters every one of those tasks takes."""
    with dsl.If(shards == 1, name="one-ingest-task"):
        ingest_task = on_cluster(ingest(**settings), CPU_STAGE, s3_secret_name)
    with dsl.Else(name="ingest-shards"):
        shard_list = on_cluster(ingest_shard_indices(shards=shards), LIGHT_STAGE, s3_secret_name)
        with dsl.ParallelFor(shard_list.output, name="ingest-shard-fan-out") as shard_index:
            shard_task = ingest_shard(index=shard_index, shards=shards, **settings)
            on_cluster(shard_task, CPU_STAGE, s3_secret_name)
        merge_task = ingest_merge(
            shards=dsl.Collected(shard_task.outputs["shard"]), shard_count=shards, **settings
        )
        on_cluster(merge_task, CPU_STAGE, s3_secret_name)
    pairs = dsl.OneOf(ingest_task.outputs["pairs"], merge_task.outputs["pairs"])
    corpus = dsl.OneOf(ingest_task.outputs["corpus"], merge_task.outputs["corpus"])
    return pairs, corpus


class Outputs(NamedTuple):
    """What a run hands back (kfp.local returns these; the KFP UI lists them as the run's outputs)."""

    bundle: Model  # the release bundle, passed or not
    evaluation: Artifact  # evaluate's metrics.json
    decision: Artifact  # the gate's decision.json


@dsl.pipeline(name=PIPELINE_NAME, description="Train a natural-language-to-code search model and release it.")
def train_pipeline(
    # ingest
    ingest_sources: list = ["python:stdlib", "python:site-packages"],  # noqa: B006 (KFP reads defaults here)
    ingest_languages: list = [],  # noqa: B006
    ingest_max_files_per_source: int = 0,
    ingest_corpus_near_dup: bool = True,
    ingest_workers: int = 1,
    ingest_shards: int = 1,
    ingest_allow_licenses: list = [],  # noqa: B006
    ingest_deny_licenses: list = [],  # noqa: B006
    # train_tokenizer
    train_tokenizer_vocab_size: int = 32768,
    train_tokenizer_min_frequency: int = 2,
    train_tokenizer_fertility_rows: int = 2000,
    train_tokenizer_max_bytes: int = 0,
    # train_encoder
    train_encoder_size: str = "small",
    train_encoder_init_from: str = "",
    train_encoder_towers: str = "shared",
    train_encoder_embedding_dim: int = 0,
    train_encoder_max_length: int = 128,
    train_encoder_inference_max_length: int = 0,
    train_encoder_epochs: int = 3,
    train_encoder_max_steps: int = 0,
    train_encoder_batch_size: int = 32,
    train_encoder_grad_accum: int = 1,
    train_encoder_lr: float = 0.0005,
    train_encoder_warmup_ratio: float = 0.05,
    train_encoder_temperature: float = 0.05,
    train_encoder_learnable_temperature: bool = False,
    train_encoder_zero_stage: int = 0,
    train_encoder_precision: str = "auto",
    train_encoder_seed: int = 0,
    train_encoder_eval_every: int = 100,
    train_encoder_checkpoint_every: int = 200,
    train_encoder_checkpoint_every_epochs: int = 0,
    train_encoder_keep_checkpoints: int = 2,
    train_encoder_max_train_pairs: int = 0,
    train_encoder_max_valid_pairs: int = 1000,
    train_encoder_time_budget_minutes: float = 0.0,
    train_encoder_num_workers: int = 0,
    train_encoder_hard_negative_weight: float = 0.0,
    train_encoder_max_hard_negatives: int = 4,
    train_encoder_distill_weight: float = 0.0,
    train_encoder_distill_temperature: float = 0.0,
    train_encoder_teacher_false_negatives: bool = False,
    train_encoder_teacher_filter_top_k: int = 0,
    train_encoder_teacher_filter_pool: int = 2000,
    train_encoder_docstring_share: float = 0.0,
    # hard-negative rounds: mine_hard_negatives -> train_encoder (continued), 0..2 times
    hard_negative_rounds: int = 0,
    mine_hard_negatives_count: int = 4,
    mine_hard_negatives_range_min: int = 0,
    mine_hard_negatives_range_max: int = 50,
    mine_hard_negatives_relative_margin: float = 0.95,
    mine_hard_negatives_absolute_margin: float = 0.0,
    mine_hard_negatives_sampling: str = "top",
    mine_hard_negatives_candidates: str = "sample",
    mine_hard_negatives_max_train_pairs: int = 0,
    mine_hard_negatives_batch_size: int = 64,
    mine_hard_negatives_runtime: str = "torch",
    hard_negative_training_max_steps: int = 0,
    hard_negative_training_epochs: int = 3,
    hard_negative_training_lr: float = 0.0005,
    hard_negative_training_warmup_ratio: float = 0.05,
    hard_negative_training_hard_negative_weight: float = 0.0,
    hard_negative_training_max_hard_negatives: int = 4,
    hard_negative_training_time_budget_minutes: float = 0.0,
    # train_decoder: code from the final encoder's embeddings, beside evaluate and the index
    train_decoder_size: str = "small",
    train_decoder_prefix_tokens: int = 8,
    train_decoder_token_bias: bool = True,
    train_decoder_max_length: int = 128,
    train_decoder_skip_long_functions: bool = True,
    train_decoder_query_share: float = 0.2,
    train_decoder_epochs: int = 1,
    train_decoder_max_steps: int = 0,
    train_decoder_batch_size: int = 16,
    train_decoder_grad_accum: int = 1,
    train_decoder_lr: float = 0.001,
    train_decoder_warmup_ratio: float = 0.05,
    train_decoder_zero_stage: int = 0,
    train_decoder_precision: str = "auto",
    train_decoder_seed: int = 0,
    train_decoder_eval_every: int = 200,
    train_decoder_checkpoint_every: int = 200,
    train_decoder_checkpoint_every_epochs: int = 0,
    train_decoder_keep_checkpoints: int = 2,
    train_decoder_max_train_pairs: int = 0,
    train_decoder_max_valid_pairs: int = 200,
    train_decoder_max_eval_pairs: int = 1000,
    train_decoder_generate_samples: int = 100,
    train_decoder_generate_max_tokens: int = 256,
    train_decoder_rerank_candidates: int = 8,
    train_decoder_runtime: str = "torch",
    train_decoder_threads: int = 0,
    train_decoder_time_budget_minutes: float = 0.0,
    # evaluate
    evaluate_suites: list = ["test", "humaneval", "cosqa"],  # noqa: B006
    evaluate_max_queries: int = 0,
    evaluate_n_distractors: int = 999,
    evaluate_runtime: str = "torch",
    # build_index
    build_index_factory: str = "",
    build_index_max_corpus: int = 0,
    build_index_whole_sources: list = [],  # noqa: B006
    build_index_recall_queries: int = 1000,
    build_index_runtime: str = "torch",
    build_index_max_length: int = 0,
    build_index_shards: int = 0,
    build_index_shard_rows: int = 1_000_000,
    build_index_ivf_on_disk: bool = False,
    # export_onnx
    export_onnx_max_mrr_loss: float = 0.005,
    export_onnx_parity_texts: int = 512,
    export_onnx_latency_repeats: int = 20,
    export_onnx_max_test_queries: int = 0,
    # gate (and publish)
    gate_name: str = "semcode",
    gate_registry: str = "",
    gate_primary_metric: str = "test/full/model/mrr",
    gate_tolerance: float = 0.005,
    gate_require_int8_parity: bool = True,
    gate_version: str = "",
    gate_guarded_suites: list = ["*"],  # noqa: B006
    gate_zero_shot_regression: str = "refuse",
    # cluster
    gpu_count: int = 1,
    gpu_node_selector: dict = {"nvidia.com/gpu.present": "true"},  # noqa: B006
    gpu_tolerations: list = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],  # noqa: B006
    s3_secret_name: str = "semcode-s3",
    num_nodes: int = 1,
    trainjob_runtime: str = "torch-distributed",
    checkpoint_root: str = "",
    tensorboard_prefix: str = "",
    resume_run_id: str = "",
) -> Outputs:
    """Train a natural-language-to-code search model and release it when it beats the published one.

    Args:
        ingest_sources: Sources as KIND:LOCATION: python:stdlib, python:site-packages, dir:PATH, csn:PATH, pairs:PATH, text:PATH (JSONL/Parquet rows with a text or content column: The Stack, code-rag-bench), humaneval: (PATH local or s3://).
        ingest_languages: Languages read from dir: and JSONL sources, e.g. ["go", "java"]; [] = all of python, go, java, javascript, typescript, ruby, php, rust, c, cpp (python: sources stay Python).
        ingest_max_files_per_source: Read at most this many files per source, sampled by path hash (0 = all).
        ingest_corpus_near_dup: Also remove near duplicates from the corpus (exact ones always).
        ingest_workers: Processes that parse source files (1 = in the ingest process).
        ingest_shards: Split every source's files into this many shards by a stable hash of their path, ingested side by side (a ParallelFor, one pod each) and merged with one global deduplication: the same pairs and corpus as 1 (1 = one ingest task).
        ingest_allow_licenses: Keep only rows whose licence (a dir:'s licence file, a package's metadata, a row's license field) these SPDX ids meet, e.g. ["MIT", "Apache-2.0"] ("unknown": rows without one); [] = all.
        ingest_deny_licenses: Drop rows whose licence needs one of these SPDX ids, e.g. ["GPL-3.0-only"] ("unknown": rows without one).
        train_tokenizer_vocab_size: Vocabulary size, including the 256 byte symbols and 5 special tokens.
        train_tokenizer_min_frequency: A pair of tokens must occur at least this often to be merged.
        train_tokenizer_fertility_rows: At most this many rows (test pairs) for the fertility measurement.
        train_tokenizer_max_bytes: Stop reading the corpus after this many bytes of UTF-8 text (0 = no limit).
        train_encoder_size: Encoder size when training from scratch: tiny, small or base.
        train_encoder_init_from: Start from a checkpoint: a directory, s3://..., or 'minilm' ('' = from scratch with the trained tokenizer).
        train_encoder_towers: One tower for queries and code (shared) or one each (separate).
        train_encoder_embedding_dim: Output dimension (0 = the size's default, or the checkpoint's hidden size).
        train_encoder_max_length: Tokens per query or code; longer texts are truncated.
        train_encoder_inference_max_length: Tokens per text of the saved encoder: validation, evaluate, index, search (0 = max_length).
        train_encoder_epochs: Passes over the training pairs (ignored when max_steps > 0).
        train_encoder_max_steps: Optimizer steps to train (0 = as many as epochs gives).
        train_encoder_batch_size: Pairs per micro-batch (per GPU); the in-batch negatives are the others.
        train_encoder_grad_accum: Micro-batches per optimizer step.
        train_encoder_lr: Peak learning rate (about 5e-4 from scratch, 2e-5..5e-5 when fine-tuning).
        train_encoder_warmup_ratio: Linear warmup as a fraction of the total steps.
        train_encoder_temperature: InfoNCE temperature (the start value when learnable).
        train_encoder_learnable_temperature: Learn the temperature, within [0.01, 1].
        train_encoder_zero_stage: DeepSpeed ZeRO stage: 0, 1 or 2 (1 and 2 partition optimizer state over GPUs).
        train_encoder_seed: Seed for initialisation, data order and dropout.
        train_encoder_eval_every: Validate every this many steps (0 = only at the end); the best validation MRR is shipped.
        train_encoder_precision: Training precision: auto (bf16 on a GPU, fp32 on the CPU), bf16, fp16 (dynamic loss scaling, for GPUs without bf16 such as V100 and T4) or fp32 (when half precision diverges); every training task of the run.
        train_encoder_checkpoint_every: Checkpoint every this many steps (0 = only at the end).
        train_encoder_checkpoint_every_epochs: Also checkpoint at the end of every this many epochs (0 = by steps only).
        train_encoder_keep_checkpoints: Keep the newest this many checkpoints, in the pod and under checkpoint_root (0 = all).
        train_encoder_max_train_pairs: Train on a seeded sample of this many pairs (0 = all).
        train_encoder_max_valid_pairs: Validate on a seeded sample of this many pairs (0 = all).
        train_encoder_time_budget_minutes: Stop training after this many minutes (0 = no limit).
        train_encoder_num_workers: Tokenizer worker processes feeding batches (0 = in the training process).
        train_encoder_hard_negative_weight: Weight of the hard-negative term in the first training (needs pairs with mined hard_negatives).
        train_encoder_max_hard_negatives: Hard negatives per pair used when the hard-negative weight is > 0.
        train_encoder_distill_weight: Weight of a KL term keeping the in-batch scores close to the starting checkpoint's, a frozen teacher (fine-tuning only; each hard-negative round's teacher is the encoder it continues). 0 = off.
        train_encoder_distill_temperature: Temperature of both score distributions in that KL term (0 = the contrastive temperature).
        train_encoder_teacher_false_negatives: Hide from the contrastive term the in-batch candidates the starting checkpoint scores above the positive (needs init_from).
        train_encoder_teacher_filter_top_k: Keep a train pair only when the starting checkpoint ranks its code in the top k for its query among train_encoder_teacher_filter_pool pairs (0 = keep all; needs init_from).
        train_encoder_teacher_filter_pool: Train pairs embedded by the starting checkpoint for that filter (the others are dropped).
        train_encoder_docstring_share: Share of train codes given their docstring back as first body line (every training of the run).
        hard_negative_rounds: Rounds of mine_hard_negatives -> continued train_encoder after the first training: 0, 1 or 2 (more runs 2). Each mines the ingest train pairs with the latest encoder and continues from it with the hard_negative_training settings; evaluate and everything after use the last round's encoder.
        mine_hard_negatives_count: Hard negatives kept per pair.
        mine_hard_negatives_range_min: Skip the best-ranked candidates up to this rank (ranks count from 0, without the gold).
        mine_hard_negatives_range_max: Consider candidates ranked below this only.
        mine_hard_negatives_relative_margin: Drop candidates scoring >= this fraction of the positive's score, the NV-Retriever rule (0 = off).
        mine_hard_negatives_absolute_margin: Drop candidates scoring >= the positive's score minus this (0 = off).
        mine_hard_negatives_sampling: Which survivors to keep: top (best-ranked) or random (seeded).
        mine_hard_negatives_candidates: The candidate pool: sample (the mined rows' codes) or train (every train code).
        mine_hard_negatives_max_train_pairs: Mine a seeded sample of this many train pairs; the round trains on them only (0 = all).
        mine_hard_negatives_batch_size: Texts per encoder forward pass while mining.
        mine_hard_negatives_runtime: Run the encoder with torch, or exported: onnx-int8 (faster on CPU: bench/RESULTS.md) or onnx-fp32.
        hard_negative_training_max_steps: Optimizer steps of each round's training (0 = as many as epochs gives).
        hard_negative_training_epochs: Passes over the mined pairs in each round (ignored when max_steps > 0).
        hard_negative_training_lr: Peak learning rate of each round (lower than the first training's: it continues a trained encoder).
        hard_negative_training_warmup_ratio: Linear warmup of each round, as a fraction of its steps.
        hard_negative_training_hard_negative_weight: Weight of the hard-negative term in each round.
        hard_negative_training_max_hard_negatives: Hard negatives per pair used in each round.
        hard_negative_training_time_budget_minutes: Stop each round's training after this many minutes (0 = no limit).
        train_decoder_size: Decoder size: tiny|small|base.
        train_decoder_prefix_tokens: Virtual tokens the embedding becomes, ahead of the code tokens.
        train_decoder_token_bias: Also map the embedding to a logit bias over the vocabulary, added at every step (a bag-of-tokens prior: which identifiers the function uses).
        train_decoder_max_length: Code tokens per function, <s> and </s> included.
        train_decoder_skip_long_functions: Train only on functions that fit in max_length (else on their truncated start).
        train_decoder_query_share: Share of training functions conditioned on their docstring's embedding, not the code's.
        train_decoder_epochs: Passes over the training functions (ignored when max_steps > 0).
        train_decoder_max_steps: Optimizer steps to train (0 = as many as `epochs` gives).
        train_decoder_batch_size: Functions per micro-batch (per GPU).
        train_decoder_grad_accum: Micro-batches per optimizer step.
        train_decoder_lr: Peak learning rate.
        train_decoder_warmup_ratio: Warmup as a fraction of the total steps when warmup_steps is 0.
        train_decoder_zero_stage: DeepSpeed ZeRO stage: 0, 1 or 2 (1/2 partition optimizer state over GPUs).
        train_decoder_seed: Seed for initialisation, the samples and the data order.
        train_decoder_eval_every: Evaluate on the valid split every this many steps (0 = only at the end); the decoder shipped has the best validation loss of these.
        train_decoder_precision: Training precision of the decoder: auto, bf16, fp16 or fp32 (as train_encoder_precision).
        train_decoder_checkpoint_every: Checkpoint every this many steps (0 = only at the end).
        train_decoder_checkpoint_every_epochs: Also checkpoint at the end of every this many epochs (0 = by steps only).
        train_decoder_keep_checkpoints: Keep the newest this many checkpoints, in the pod and under checkpoint_root (0 = all).
        train_decoder_max_train_pairs: Train on a seeded sample of this many functions (0 = all).
        train_decoder_max_valid_pairs: Evaluate during training on this many valid functions (0 = none).
        train_decoder_max_eval_pairs: Test functions for the metrics and the round-trip corpus (0 = all).
        train_decoder_generate_samples: Test functions generated for parse rate, BLEU and round-trip.
        train_decoder_generate_max_tokens: Tokens generated per sample at most.
        train_decoder_rerank_candidates: Candidates per sample (greedy + samples) for the best-of-N reranked_* metrics and generate's default (1 = off).
        train_decoder_runtime: How the frozen encoder runs: torch|onnx-int8|onnx-fp32 (onnx: CPU only).
        train_decoder_threads: Torch CPU threads (0 = every core); 1 can be much faster on a busy machine.
        train_decoder_time_budget_minutes: Stop training after this much, with a final checkpoint (0 = none).
        evaluate_suites: Suites to evaluate, of test, humaneval, cosqa, polyglot (one suite per held-out repository in ../shared/benchmarks/polyglot, about 10k functions: minutes on a CPU); cosqa and polyglot are skipped when absent.
        evaluate_max_queries: Evaluate at most this many queries per suite, a seeded sample (0 = all).
        evaluate_n_distractors: Distractors per query in the CodeSearchNet protocol.
        evaluate_runtime: Run the encoders with torch, or exported as the bundle's is: onnx-int8 (what search uses; faster on CPU: bench/RESULTS.md) or onnx-fp32.
        build_index_factory: FAISS index factory string, e.g. 'HNSW32,Flat' ('' = chosen by corpus size).
        build_index_max_corpus: Index at most this many corpus rows (0 = all).
        build_index_whole_sources: Sources indexed whole under build_index_max_corpus, e.g. ["python:stdlib"]; the other sources share the rest evenly.
        build_index_recall_queries: Queries for the index's recall@10 and latency (sampled, seeded).
        build_index_runtime: Run the encoder with torch, or exported as the bundle's is: onnx-int8 (faster on CPU: bench/RESULTS.md) or onnx-fp32.
        build_index_max_length: Tokens per search document embedded for the index (0 = the encoder's own limit).
        build_index_shards: Corpus shards embedded in parallel on the GPU pool, one pod each (0 = one per build_index_shard_rows selected rows).
        build_index_shard_rows: Selected corpus rows per shard when build_index_shards is 0.
        build_index_ivf_on_disk: Keep an IVF index's inverted lists in index.ivfdata beside index.faiss (faiss' on-disk merge; search maps them): for indexes larger than memory; needs an IVF build_index_factory without RFlat.
        export_onnx_max_mrr_loss: Largest test MRR drop of int8 vs fp32 ONNX for int8 to be the default.
        export_onnx_parity_texts: Validation rows whose query and code are encoded for the ONNX parity check.
        export_onnx_latency_repeats: Timed calls per runner and shape in the latency measurement.
        export_onnx_max_test_queries: The int8 vs fp32 test MRR on at most this many test pairs, a seeded sample, against their own codes (0 = all).
        gate_name: Model name: the registry folder <registry>/<name>/ (publish uses it too).
        gate_registry: Registry holding the champion and receiving the release: a folder or s3://bucket/prefix ('' = no comparison, no publishing).
        gate_primary_metric: Metric compared with the champion, suite/protocol/system/metric (higher is better).
        gate_tolerance: The candidate may be at most this much (absolute) worse than the champion.
        gate_require_int8_parity: Refuse a candidate whose int8 encoder lost too much accuracy.
        gate_version: Version of the candidate bundle ('' = UTC timestamp + short hash of the weights).
        gate_guarded_suites: Suites (names or shell patterns, e.g. cosqa, polyglot-*) on which the candidate may not fall below its zero-shot start beyond the 95% paired interval ([] = none).
        gate_zero_shot_regression: What such a regression does: refuse (not published), or warn (published, the reasons say so).
        gpu_count: GPUs (nvidia.com/gpu) for train_encoder.
        gpu_node_selector: Node selector of the GPU node pool, as a JSON object of label: value.
        gpu_tolerations: Tolerations for the GPU node pool's taints, as a JSON list of Kubernetes tolerations.
        s3_secret_name: Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) for s3:// paths.
        num_nodes: Nodes for each train_encoder task; above 1 the task submits a Kubeflow Trainer TrainJob (num_nodes x gpu_count GPUs) running the same stage, and waits for it. Needs the Trainer installed and the S3 secret pointing at the pipeline root's store.
        trainjob_runtime: ClusterTrainingRuntime of multi-node TrainJobs: torch-distributed or deepspeed-distributed.
        checkpoint_root: Durable checkpoints of the training tasks: an s3:// prefix; each task writes <checkpoint_root>/<run id>/<task> as it trains and resumes from it when retried (a preempted pod, a lost node) ('' = checkpoints stay in the pod).
        tensorboard_prefix: Live training curves: an s3:// prefix (or a path mounted on the training pods) each training task uploads its TensorBoard event files to while it trains, under <tensorboard_prefix>/<run id>/<task> (`tensorboard --logdir s3://...` or a Kubeflow TensorBoard on it; '' = only in the artifacts; single-node training tasks only).
        resume_run_id: Continue the training tasks of an earlier run of this pipeline from its checkpoints under checkpoint_root (semcode submit --resume RUN_ID; '' = this run's own).
    """
    # 1. ingest: sources -> pairs (train/valid/test) + corpus. One task, or with ingest_shards > 1 a fan-out:
    #    each shard reads its share of every source's files and signs its rows (MinHash); one merge
    #    deduplicates across all shards and splits: the same pairs and corpus as the one task.
    ingest_settings = dict(
        sources=ingest_sources,
        languages=ingest_languages,
        max_files_per_source=ingest_max_files_per_source,
        corpus_near_dup=ingest_corpus_near_dup,
        workers=ingest_workers,
        allow_licenses=ingest_allow_licenses,
        deny_licenses=ingest_deny_licenses,
    )
    pairs, corpus = ingest_step(ingest_settings, ingest_shards, s3_secret_name)

    # 2. train_tokenizer: corpus -> tokenizer (used when training from scratch)
    tokenizer_task = train_tokenizer(
        corpus=corpus,
        pairs=pairs,
        vocab_size=train_tokenizer_vocab_size,
        min_frequency=train_tokenizer_min_frequency,
        fertility_rows=train_tokenizer_fertility_rows,
        max_bytes=train_tokenizer_max_bytes,
    )
    on_cluster(tokenizer_task, CPU_STAGE, s3_secret_name)

    # 3. train_encoder: pairs + tokenizer (or init_from's own) -> encoder, on the GPU pool;
    #    then 0..2 hard-negative rounds, each mine_hard_negatives -> train_encoder continuing the encoder
    tokenizer = tokenizer_task.outputs["tokenizer"]
    shared_training = dict(  # what every training task of a run has in common: the model and the loss
        tokenizer=tokenizer,
        size=train_encoder_size,
        init_from=train_encoder_init_from,
        towers=train_encoder_towers,
        embedding_dim=train_encoder_embedding_dim,
        max_length=train_encoder_max_length,
        inference_max_length=train_encoder_inference_max_length,
        batch_size=train_encoder_batch_size,
        grad_accum=train_encoder_grad_accum,
        temperature=train_encoder_temperature,
        learnable_temperature=train_encoder_learnable_temperature,
        distill_weight=train_encoder_distill_weight,
        distill_temperature=train_encoder_distill_temperature,
        teacher_false_negatives=train_encoder_teacher_false_negatives,
        teacher_filter_top_k=train_encoder_teacher_filter_top_k,
        teacher_filter_pool=train_encoder_teacher_filter_pool,
        docstring_share=train_encoder_docstring_share,
        zero_stage=train_encoder_zero_stage,
        precision=train_encoder_precision,
        seed=train_encoder_seed,
        eval_every=train_encoder_eval_every,
        checkpoint_every=train_encoder_checkpoint_every,
        checkpoint_every_epochs=train_encoder_checkpoint_every_epochs,
        keep_checkpoints=train_encoder_keep_checkpoints,
        max_valid_pairs=train_encoder_max_valid_pairs,
        num_workers=train_encoder_num_workers,
        num_nodes=num_nodes,
        trainjob_runtime=trainjob_runtime,
        trainjob_image=GPU_IMAGE,
        gpu_count=gpu_count,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
        s3_secret_name=s3_secret_name,
        checkpoint_root=checkpoint_root,
        tensorboard_prefix=tensorboard_prefix,
        resume_run_id=resume_run_id,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    )

    def first_training() -> PipelineTask:
        task = train_encoder(
            pairs=pairs,
            epochs=train_encoder_epochs,
            max_steps=train_encoder_max_steps,
            lr=train_encoder_lr,
            warmup_ratio=train_encoder_warmup_ratio,
            hard_negative_weight=train_encoder_hard_negative_weight,
            max_hard_negatives=train_encoder_max_hard_negatives,
            max_train_pairs=train_encoder_max_train_pairs,
            time_budget_minutes=train_encoder_time_budget_minutes,
            **shared_training,
        )
        return on_gpu_pool(task, gpu_count, gpu_node_selector, gpu_tolerations, s3_secret_name)

    def hard_negative_round(number: int, previous: PipelineTask) -> PipelineTask:
        mine_task = mine_hard_negatives(
            encoder=previous.outputs["encoder"],
            pairs=pairs,  # always the ingest pairs: each round mines afresh with the latest encoder
            count=mine_hard_negatives_count,
            range_min=mine_hard_negatives_range_min,
            range_max=mine_hard_negatives_range_max,
            relative_margin=mine_hard_negatives_relative_margin,
            absolute_margin=mine_hard_negatives_absolute_margin,
            sampling=mine_hard_negatives_sampling,
            candidates=mine_hard_negatives_candidates,
            max_train_pairs=mine_hard_negatives_max_train_pairs,
            batch_size=mine_hard_negatives_batch_size,
            max_length=train_encoder_max_length,
            seed=train_encoder_seed,
            device="auto",
            runtime=mine_hard_negatives_runtime,
        ).set_display_name(f"mine-hard-negatives-{number}")
        on_gpu_pool(mine_task, gpu_count, gpu_node_selector, gpu_tolerations, s3_secret_name)
        train_task = train_encoder(
            pairs=mine_task.outputs["mined"],
            init_encoder=previous.outputs["encoder"],
            epochs=hard_negative_training_epochs,
            max_steps=hard_negative_training_max_steps,
            lr=hard_negative_training_lr,
            warmup_ratio=hard_negative_training_warmup_ratio,
            hard_negative_weight=hard_negative_training_hard_negative_weight,
            max_hard_negatives=hard_negative_training_max_hard_negatives,
            max_train_pairs=0,  # the mined sample
            time_budget_minutes=hard_negative_training_time_budget_minutes,
            **shared_training,
        ).set_display_name(f"train-encoder-round-{number}")
        return on_gpu_pool(train_task, gpu_count, gpu_node_selector, gpu_tolerations, s3_secret_name)

    # A KFP DAG is static: one branch per round count, and dsl.OneOf takes the encoder of the branch that ran.
    with dsl.If(hard_negative_rounds == 0, name="no-hard-negative-rounds"):
        rounds_0 = first_training()
    with dsl.Elif(hard_negative_rounds == 1, name="one-hard-negative-round"):
        rounds_1 = hard_negative_round(1, first_training())
    with dsl.Else(name="two-hard-negative-rounds"):
        rounds_2 = hard_negative_round(2, hard_negative_round(1, first_training()))
    encoder = dsl.OneOf(rounds_0.outputs["encoder"], rounds_1.outputs["encoder"], rounds_2.outputs["encoder"])

    # 4. export_onnx: encoder -> fp32 + int8 ONNX, parity and latency. The stages after it that run an
    #    onnx runtime run these files (what the bundle ships) rather than exporting the encoder again.
    onnx_task = export_onnx(
        encoder=encoder,
        pairs=pairs,
        max_mrr_loss=export_onnx_max_mrr_loss,
        parity_texts=export_onnx_parity_texts,
        latency_repeats=export_onnx_latency_repeats,
        max_test_queries=export_onnx_max_test_queries,
    )
    on_cluster(onnx_task, CPU_STAGE, s3_secret_name)
    onnx = onnx_task.outputs["onnx"]

    # 5. train_decoder: code from the final encoder's embeddings (frozen), beside evaluate and the index
    decoder_task = train_decoder(
        encoder=encoder,
        onnx=onnx,
        pairs=pairs,
        tokenizer=tokenizer,
        size=train_decoder_size,
        prefix_tokens=train_decoder_prefix_tokens,
        token_bias=train_decoder_token_bias,
        max_length=train_decoder_max_length,
        skip_long_functions=train_decoder_skip_long_functions,
        query_share=train_decoder_query_share,
        epochs=train_decoder_epochs,
        max_steps=train_decoder_max_steps,
        batch_size=train_decoder_batch_size,
        grad_accum=train_decoder_grad_accum,
        lr=train_decoder_lr,
        warmup_ratio=train_decoder_warmup_ratio,
        zero_stage=train_decoder_zero_stage,
        precision=train_decoder_precision,
        seed=train_decoder_seed,
        eval_every=train_decoder_eval_every,
        checkpoint_every=train_decoder_checkpoint_every,
        checkpoint_every_epochs=train_decoder_checkpoint_every_epochs,
        keep_checkpoints=train_decoder_keep_checkpoints,
        max_train_pairs=train_decoder_max_train_pairs,
        max_valid_pairs=train_decoder_max_valid_pairs,
        max_eval_pairs=train_decoder_max_eval_pairs,
        generate_samples=train_decoder_generate_samples,
        generate_max_tokens=train_decoder_generate_max_tokens,
        rerank_candidates=train_decoder_rerank_candidates,
        runtime=train_decoder_runtime,
        threads=train_decoder_threads,
        time_budget_minutes=train_decoder_time_budget_minutes,
        checkpoint_root=checkpoint_root,
        tensorboard_prefix=tensorboard_prefix,
        resume_run_id=resume_run_id,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    )
    on_gpu_pool(decoder_task, gpu_count, gpu_node_selector, gpu_tolerations, s3_secret_name)

    # 6. build_index: the corpus cut into shards (build_index's row selection, contiguous runs), each
    #    embedded by its own pod on the GPU pool; then one task trains the index on a sample of all the
    #    vectors and adds every shard -> FAISS index (the same ids as one pod embedding it all)
    plan_task = plan_corpus_shards(
        corpus=corpus,
        shards=build_index_shards,
        shard_rows=build_index_shard_rows,
        max_corpus=build_index_max_corpus,
    )
    on_cluster(plan_task, LIGHT_STAGE, s3_secret_name)
    with dsl.ParallelFor(plan_task.output, name="corpus-shards", parallelism=EMBED_PARALLELISM) as item:
        embed_task = embed_corpus(
            encoder=encoder,
            onnx=onnx,
            corpus=corpus,
            shard=item.shard,
            shards=item.shards,
            gpu_count=gpu_count,
            max_corpus=build_index_max_corpus,
            whole_sources=build_index_whole_sources,
            runtime=build_index_runtime,
            max_length=build_index_max_length,
        )
        on_gpu_pool(embed_task, gpu_count, gpu_node_selector, gpu_tolerations, s3_secret_name)
    index_task = build_index(
        encoder=encoder,
        onnx=onnx,
        embedded=dsl.Collected(embed_task.outputs["embeddings"]),
        pairs=pairs,
        factory=build_index_factory,
        max_corpus=build_index_max_corpus,
        whole_sources=build_index_whole_sources,
        recall_queries=build_index_recall_queries,
        runtime=build_index_runtime,
        max_length=build_index_max_length,
        ivf_on_disk=build_index_ivf_on_disk,
    )
    on_cluster(index_task, CPU_STAGE, s3_secret_name)

    # 7. evaluate (after the index, whose vectors it reuses): model vs BM25 (vs init_from zero-shot when
    #    fine-tuning) on the test split and suites
    evaluate_task = evaluate(
        encoder=encoder,
        onnx=onnx,
        pairs=pairs,
        corpus=corpus,  # the everyday suite ranks its python:stdlib rows...
        index=index_task.outputs["index"],  # ...and its model pass takes the index's vectors of them
        suites=evaluate_suites,
        max_queries=evaluate_max_queries,
        n_distractors=evaluate_n_distractors,
        runtime=evaluate_runtime,
        baseline_encoder=train_encoder_init_from,
        everyday_max_length=build_index_max_length,  # the everyday suite ranks rows as the index holds them
    )
    on_cluster(evaluate_task, CPU_STAGE, s3_secret_name)

    # 8. gate: everything -> release bundle + report; passed when not worse than the registry's champion
    gate_task = gate(
        encoder=encoder,
        onnx=onnx,
        index=index_task.outputs["index"],
        evaluation=evaluate_task.outputs["evaluation"],
        pairs=pairs,
        tokenizer=tokenizer,
        decoder=decoder_task.outputs["decoder"],
        name=gate_name,
        registry=gate_registry,
        primary_metric=gate_primary_metric,
        tolerance=gate_tolerance,
        require_int8_parity=gate_require_int8_parity,
        version=gate_version,
        guarded_suites=gate_guarded_suites,
        zero_shot_regression=gate_zero_shot_regression,
    )
    on_cluster(gate_task, LIGHT_STAGE, s3_secret_name)
    gate_task.set_caching_options(False)  # the registry's champion changes between runs
    passed = gate_task.outputs["Output"]  # the return value; kfp.local resolves conditions on "Output" only

    # 9. publish: only a candidate the gate passed, and only when there is a registry
    with dsl.If(passed == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not a Python test)
        with dsl.If(gate_registry != "", name="registry-given"):
            publish_task = publish(bundle=gate_task.outputs["bundle"], registry=gate_registry, name=gate_name)
            on_cluster(publish_task, LIGHT_STAGE, s3_secret_name)
            publish_task.set_caching_options(False)  # publishing is a side effect

    return Outputs(
        bundle=gate_task.outputs["bundle"],
        evaluation=evaluate_task.outputs["evaluation"],
        decision=gate_task.outputs["decision"],
    )

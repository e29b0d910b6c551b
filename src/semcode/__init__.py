"""semcode: natural-language-to-code search models, trained end to end.

The module map, lowest layer first. A module imports only from its own layer or those below it
(tests/test_layers.py enforces it, lazy imports included, and that no imports go around a circle).

0. foundation, torch-free
   contract     the release bundle's stable names: files, tower kinds, precisions, runtimes, ONNX I/O
   config       frozen stage configs, presets (semcode/configs/*.yaml, package data), CLI flags
   progress     log lines and progress bars;  storage  local paths and s3:// (boto3)
   locks        an exclusive lock around a read-check-write, local (flock) or on S3 (a lease)
1. library, importable and CPU-testable
   data/        sources/ (per kind), files (safe bounded reads), gitignore, refresh (what changed since an
                index), extraction, cleaning, splits, licences, Parquet shards;  tokenizer  the BPE tokenizer
   models/      the encoder and the decoder;  losses  the contrastive loss
   train/       distributed (DeepSpeed set-up), checkpoints, history, loop (the step loop)
   embed        an encoder spec -> an embedding function, every runtime (torch, ONNX Runtime)
   embedding_cache  vectors an encoder embedded before, keyed by its weights and each text's sha256
   export       torch -> fp32 / int8 ONNX;  index  FAISS;  mining  hard negatives
   corpus       which corpus rows are indexed, their search documents, their embedding in chunks
   indexing     a corpus's searchable index: FAISS built and measured, its metadata, BM25
   index_bundle  the index-only bundle (semcode index): an existing encoder's files, a new index
   evaluation   retrieval metrics, BM25, paired intervals;  suites  the evaluation suites
   everyday     the everyday-queries suite (suite_data/everyday.jsonl): load, score, coverage
   retrieval    search-time scoring: the BM25 index, the fusion of dense and BM25 scores (hybrid)
   decoding     code from embeddings, and its metrics;  bundle  assemble, validate, publish a bundle
   bundle_checks  the per-file checks of a bundle: ONNX signature and external data, index, tokenizer probe
   registry     the model registry's layout: <name>/<version>/ and the latest pointer
   portable     bundle contents made portable: no folder of the build machine named
   report       the model card and report.html;  hub_card  encoder/README.md, the card with a model hub's front matter
2. what runs the library
   stages/      one module per pipeline stage: run(config, inputs..., out_dir) and main(argv) (ingest's
                config beside it: ingest_config)
   cluster/     inside the training pod: a Kubeflow Trainer TrainJob for multi-node training
   serve/       the bundle's readers: semcode search, semcode serve, semcode generate
3. components/  one thin KFP component per stage (wiring only)
4. pipeline/    the KFP pipeline (train_pipeline.py, compiled train_pipeline.yaml beside it) and its
                drivers: local (semcode run), compile, submit, params (preset <-> parameters)
5. cli          the ``semcode`` command, importing each subcommand only when it runs;  completion  its
                bash and zsh completion scripts (shtab, from every command's own parser)
"""

__version__ = "0.1.0"

import logging

# faiss's loader logs each instruction-set build it cannot find (avx512_spr, avx512, ...) at INFO with
# its exception; under kfp.local's INFO root logger those three lines reached every stage's console.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

# A task of `semcode run` dies with it. kfp.local starts each task as a child process; a `semcode run`
# killed with SIGKILL cannot stop them, and they used to run on (65 s in one test) and hold the machine.
# `semcode run` names itself in RUN_PID_ENV; a KFP task process (python -m kfp.dsl.executor_main) then
# leads a process group of its own (its workers join it) and a daemon thread ends that group once the run
# process is gone or the task was re-parented away from it. Ctrl-C reaches `semcode run`, which exits, so
# the tasks follow within a second too. Such a task also exits with a code that says whether a retry can help
# (_exit_by_failure).
RUN_PID_ENV = "SEMCODE_RUN_PID"
# `semcode run` also names its run's folder for durable checkpoints: <run-dir>/checkpoints/<task>
# (semcode.train.checkpoints.durable_location), which `semcode run --resume` continues from.
RUN_CHECKPOINTS_ENV = "SEMCODE_RUN_CHECKPOINTS"
# A second place for the training stages' TensorBoard event files: a local path or an s3:// prefix
# (semcode.train.history.live_log_dirs / live_log_upload); `semcode run` checks it is writable first.
TENSORBOARD_PREFIX_ENV = "SEMCODE_TENSORBOARD_DIR"
RUN_WATCH_SECONDS = 0.5


def _end_with_the_run() -> None:
    import os
    import sys

    run_pid = os.environ.get(RUN_PID_ENV, "")
    is_task = sys.argv[:1] and sys.argv[0].replace("\\", "/").endswith("kfp/dsl/executor_main.py")
    if not (run_pid.isdigit() and is_task and int(run_pid) != os.getpid()):
        return
    import signal
    import threading
    import time

    parent = os.getppid()
    os.setpgid(0, 0)  # this task and what it starts: one group to end together

    def watch() -> None:
        while True:
            time.sleep(RUN_WATCH_SECONDS)
            if not _alive(int(run_pid)) or os.getppid() != parent:
                print(f"[run] semcode run (pid {run_pid}) is gone: ending this task", file=sys.stderr)
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="semcode-run-watch", daemon=True).start()
    sys.excepthook = _exit_by_failure


def _exit_by_failure(kind: type[BaseException], error: BaseException, traceback: object) -> None:
    """How a task of `semcode run` ends on an exception: bad input in one line (no traceback: a retry would
    print the same), anything else with its traceback; then the exit code config.exit_code_of gives, which
    `semcode run` reads to decide whether a retry can help (semcode.pipeline.kfp_local)."""
    import os
    import sys

    if not isinstance(error, Exception):  # KeyboardInterrupt: as Python ends on it
        sys.__excepthook__(kind, error, traceback)
        return
    from semcode import config

    code = config.exit_code_of(error)
    if code == config.EXIT_BAD_INPUT:
        print(f"error: {error}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, traceback)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the exception is reported; Python would exit 1 whatever it was


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, not another user's (a reused pid), not a zombie awaiting its reaper."""
    import os

    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # Linux: "pid (name) state ..."
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): the signal test above is all there is
        return True


_end_with_the_run()

#!/bin/bash
# The local preset trained on Python plus nine other languages (bench/RESULTS.md, issue 17). First:
#   .venv/bin/python bench/gather_polyglot_corpus.py --out /tmp/polyglot_corpus
# Left out: packages that yield no pair (no doc comments) and nlohmann-json (33 of 44 headers do not parse).
cd "$(dirname "$0")/.."
args=(--source python:stdlib --source python:site-packages)
for d in /tmp/polyglot_corpus/*/*/; do case "$d" in *nlohmann-json3-dev*|*libcxxopts-dev*|*/chalk/|*/minimist/|*/yargs/|*librust-bitflags-dev*|*librust-thiserror-dev*|*tanstack-table-core*) continue;; esac; args+=(--source "dir:${d%/}"); done  # nlohmann: 33 of 44 headers do not parse
start=$(date +%s)
.venv/bin/semcode run "${args[@]}" --runs-dir /tmp/polyruns --run-id poly-train \
  --param 'evaluate_suites=[test,humaneval,cosqa,polyglot]'
echo "rc=$? wall=$(( $(date +%s)-start ))s"

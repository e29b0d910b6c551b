#!/usr/bin/env bash
# The Makefile's pip steps timed in two fresh venvs, with and without pip's byte-compiling, then
# compileall on every core (bench/RESULTS.md, "The set-up without pip's byte-compiling").
#   bash bench/setup_times.sh [scratch-dir]        # about 5 minutes on 2 cores, warm pip cache
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=${1:-$(mktemp -d)}
imports="import torch, deepspeed, faiss, tokenizers, transformers, kfp"
seconds() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
for mode in compile nocompile; do
  venv="$scratch/$mode"
  rm -rf "$venv"
  python3.11 -m venv "$venv"
  flag=""; [ "$mode" = nocompile ] && flag="--no-compile"
  s=$(date +%s.%N)
  "$venv/bin/python" -m pip install --quiet $flag "$(grep '^pip==' requirements-test.lock)"
  "$venv/bin/python" -m pip install --quiet $flag "$(grep '^torch==' requirements.lock)"
  t=$(date +%s.%N)
  "$venv/bin/python" -m pip install --quiet $flag -r requirements-test.lock
  u=$(date +%s.%N)
  "$venv/bin/python" -c "$imports" 2>/dev/null
  v=$(date +%s.%N)
  echo "$mode: pip+torch $(seconds "$s" "$t") s, lock $(seconds "$t" "$u") s, first import $(seconds "$u" "$v") s"
done
c=$(date +%s.%N)
"$scratch/nocompile/bin/python" -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
d=$(date +%s.%N)
"$scratch/nocompile/bin/python" -c "$imports" 2>/dev/null
e=$(date +%s.%N)
echo "nocompile + compileall on every core: $(seconds "$c" "$d") s, then import $(seconds "$d" "$e") s"

#!/usr/bin/env bash
# Part 1's search benchmark on one GPU shared by several jobs (bench_search.py, one JSON per job): hybrid searches
# of SECONDS each on Gemma 3 270M, at the settings where earlier rounds fell short, with the references each
# setting needs. At most SLOTS jobs run at once (default 4), searches first: Gemma's KL cache at 32k tokens takes
# 17 GB per job and six jobs at once ran out of an H200's memory. The last stage of the Wanda searches (and of
# ATP's β search in their references) prunes sequentially, as the result is applied (dsa_core.fitness); SparseGPT
# keeps its one-shot level database there (sequential SparseGPT takes ~20 s a candidate on Gemma).
# `python bench/bench_search.py report OUT` prints the tables.
#
#   bench/search_one_gpu.sh OUT SECONDS [SLOTS]
#   bench/search_one_gpu.sh runs/h200 540
set -u
out=$1 seconds=$2 slots=${3:-4}
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PY=${PYTHON:-python} OUT=$out
gemma="--model gemma3-270m --fidelity 2k,8k,32k --fitness kl"
search="run --space hybrid --seed 0 --seconds $seconds --out $out"
# One line per job: its name (OUT/log_NAME.txt), then bench_search.py's arguments.
jobs="gemma_w60_seq $search $gemma --metric wanda --target 0.6 --last-stage sequential
gemma_w70_seq $search $gemma --metric wanda --target 0.7 --last-stage sequential
gemma_sg70 $search $gemma --metric sparsegpt --target 0.7
refs_gemma_w60_seq refs --out $out $gemma --metric wanda --target 0.6 --last-stage sequential
refs_gemma_w70_seq refs --out $out $gemma --metric wanda --target 0.7 --last-stage sequential
refs_gemma_sg70 refs --out $out $gemma --metric sparsegpt --target 0.7"
# shellcheck disable=SC2016  # $0, $1 and $@ belong to the inner shell
echo "$jobs" | xargs -P "$slots" -L 1 sh -c 'name=$0; "$PY" bench/bench_search.py "$@" > "$OUT/log_$name.txt" 2>&1' \
    && echo "done"

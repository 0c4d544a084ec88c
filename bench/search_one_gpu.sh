#!/usr/bin/env bash
# Part 1's search benchmark on one GPU shared by every job at once (bench_search.py, one JSON per job): hybrid
# searches of SECONDS each on both models at the settings where earlier runs fell short, and the references those
# settings need (the others are in bench/results/h200x2_search_part1). Nine jobs did not fit an H200's memory; with
# these six, Gemma's SparseGPT search still ran out of it (run it alone).
# `python bench/bench_search.py report OUT` prints the tables.
#
#   bench/search_one_gpu.sh OUT SECONDS
#   bench/search_one_gpu.sh runs/h200 540
set -u
out=$1 seconds=$2
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=${PYTHON:-python}
smol=(--model smollm2 --fidelity 2k,16k,64k)
gemma=(--model gemma3-270m --fidelity 2k,8k,32k)
search=(run --space hybrid --seed 0 --seconds "$seconds" --out "$out")
refs=(refs --out "$out")

job() {  # job NAME ARGS...: one bench_search.py run in the background, its output in OUT/log_NAME.txt
  local name=$1
  shift
  "$py" bench/bench_search.py "$@" > "$out/log_$name.txt" 2>&1 &
}

job gemma_w60_ppl "${search[@]}" "${gemma[@]}" --metric wanda --target 0.6 --fitness ppl
job gemma_sg70_kl "${search[@]}" "${gemma[@]}" --metric sparsegpt --target 0.7
job smollm2_sg70_kl "${search[@]}" "${smol[@]}" --metric sparsegpt --target 0.7
job refs_gemma_w60_ppl "${refs[@]}" "${gemma[@]}" --metric wanda --target 0.6 --fitness ppl
job refs_gemma_sg70_kl "${refs[@]}" "${gemma[@]}" --metric sparsegpt --target 0.7
job refs_smollm2_sg70_kl "${refs[@]}" "${smol[@]}" --metric sparsegpt --target 0.7
wait
echo "done"

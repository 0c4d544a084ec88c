#!/usr/bin/env bash
# Part 1's search benchmark for one model on one GPU, as one script: a search alone first (candidates/s with the
# GPU to itself), then the references and the searches as parallel jobs (bench_search.py, one JSON each), then the
# transfer of the function found at 70% to 60% and 80%. `python bench/bench_search.py report OUT` prints the tables.
#
#   bench/search_bench.sh MODEL GPU PARALLEL OUT FIDELITY SECONDS [extra bench_search options...]
#   bench/search_bench.sh smollm2 0 3 runs/bench 2k,16k,64k 75
#   bench/search_bench.sh random:tiny cpu 1 /tmp/b 64,128 5 --nsamples 2 --seqlen 64 --eval-windows 2   # smoke run
set -u
model=$1 gpu=$2 par=$3 out=$4 fidelity=$5 seconds=$6
shift 6
[ "$gpu" = cpu ] || export CUDA_VISIBLE_DEVICES=$gpu
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
mkdir -p "$out/throughput"
py=${PYTHON:-python}
common=(--model "$model" --fidelity "$fidelity" "$@")
tag=$(echo "$model" | tr '/:' '__')  # as bench_search.py names its files

"$py" bench/bench_search.py run "${common[@]}" --out "$out/throughput" --metric wanda --target 0.7 \
    --space allocation --seconds 30 --top-k 1 > "$out/log_${tag}_throughput.txt" 2>&1

jobs=(
  "refs --metric wanda --target 0.7"
  "refs --metric wanda --target 0.6"
  "refs --metric sparsegpt --target 0.7"
)
for seed in 0 1 2; do
  k=$([ $seed = 0 ] && echo 3 || echo 1)
  for space in hybrid allocation function; do
    jobs+=("run --metric wanda --target 0.7 --space $space --seed $seed --seconds $seconds --top-k $k")
  done
done
for job in "--metric wanda --target 0.6" "--metric sparsegpt --target 0.7"; do
  for space in hybrid allocation; do
    jobs+=("run $job --space $space --seed 0 --seconds $seconds")
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P "$par" -I{} sh -c \
    "\"$py\" bench/bench_search.py {} ${common[*]} --out \"$out\" > \"$out/log_${tag}_\$(echo '{}' | tr -c 'a-z0-9' _).txt\" 2>&1"

found=$(ls "$out"/*_wanda_70_function_s0.json 2>/dev/null | grep "/${tag}_")
[ -n "$found" ] && "$py" bench/bench_search.py transfer "${common[@]}" --out "$out" --from $found \
    --targets 0.6,0.8 > "$out/log_${tag}_transfer.txt" 2>&1
echo "done $model"

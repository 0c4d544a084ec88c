#!/usr/bin/env bash
# The benchmarks on a GPU machine that cannot reach PyPI or the model hub, whose image has torch but not everything
# else, and that receives files only in parts of limited size: `prepare` (here, online) lays out in a folder the
# wheels the image lacks, the shipped WikiText-2 and the GGUF files of packaged models (Gemma 3 270M by default;
# add smollm2 for it or for the `random:` shapes, which use its tokenizer) in chunks of 27 MB; on the GPU machine,
# from a checkout that holds that folder, `install` puts the wheels in ~/site, the data in ~/data and a snapshot of
# the code in ~/repo (jobs run from there, so the checkout may change under them), `chunk` keeps one chunk, `join`
# checks each joined file's sha256, converts it once and prints its dense perplexity: a model misread by another
# transformers (5.17 read Gemma 3 into a model of perplexity ~350) is caught before any search runs. `env` prints
# the exports the jobs need. `job` starts one benchmark in the background from ~/repo (setsid: it outlives the call,
# so one search runs while later calls carry files or poll) with its log in ~/res; `poll` prints each log's last
# lines and packs ~/res into $OUT, so that every poll brings the results so far back; `wait` polls once the jobs end,
# packing ~/res into $OUT every 15 s meanwhile: a call cut at its time limit still brings back what they wrote, and
# no result depends on the machine staying warm between calls (it went back between two calls twice, job and all).
#
#   bench/offline_gpu.sh prepare .carry gemma3-270m smollm2  # here: .carry/base (wheels, data), .carry/chunk0 ... 12
#   bench/offline_gpu.sh install .carry               # there, carrying .carry/base (22 MB) and .carry/chunk0
#   bench/offline_gpu.sh chunk .carry 0               # there; then two chunks a call (a call carries 64 MiB)
#   bench/offline_gpu.sh join                         # there, once every chunk is in
#   eval "$(bench/offline_gpu.sh env)"; cd ~/repo; python3 bench/bench_search.py ...
#   bench/offline_gpu.sh job w60 bench_search.py run --out ~/res ...   # there: log in ~/res/log_w60.txt
#   bench/offline_gpu.sh wait 6                                       # there, in the same call
set -euo pipefail
# What the GPU image lacks of requirements.txt for the benchmarks (its transformers is older than the pin).
WHEELS="transformers==5.23.0 regex==2026.11.19 gguf==0.19.0 optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1
colorlog==6.12.0 mako==1.4.3 cmaes==0.13.1"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}  # there: the image's, which has torch; here: the venv's
[ -x .venv/bin/python ] && PY=${PYTHON:-$PWD/.venv/bin/python}
exports() {
    echo "export PYTHONPATH=$HOME/site:$HOME/repo DSA_DATA_DIR=$HOME/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1" \
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    if [ -f ~/models/models.txt ]; then  # each carried model's file, under the variable that names its copy
        while read -r model var _; do echo "export $var=$HOME/models/$model.gguf"; done < ~/models/models.txt
    fi
}
running() {  # whether a job started by `job` still runs (by its pid: a pattern would match the caller's command)
    for f in ~/res/pid_*; do
        [ -f "$f" ] && kill -0 "$(cat "$f")" 2> /dev/null && return 0
    done
    return 1
}
pack() {  # ~/res into $OUT, which the device tool brings back
    tar czf "${OUT:?the device tool sets OUT}/res.tgz" -C ~ res
}
poll() {  # each log's last $1 lines, whether a job runs, and ~/res packed into $OUT
    for f in ~/res/log_*.txt; do  # progress bars end their lines with carriage returns
        echo "== $f" && tr '\r' '\n' < "$f" | grep -v '^$' | tail -n "$1"
    done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
    if running; then echo RUNNING; else echo IDLE; fi
    pack
}
verb=$1
shift
case $verb in
prepare)
    out=$1
    shift
    models=("${@:-gemma3-270m}")
    rm -rf "$out"/chunk* && mkdir -p "$out/base/whl" "$out/base/data"
    # shellcheck disable=SC2086  # one argument per wheel
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$out/base/whl" $WHEELS
    cp -r ../shared/data/wikitext-2 ../shared/data/wikitext-2-raw "$out/base/data/"
    : > "$out/base/models.txt"
    n=0
    for model in "${models[@]}"; do
        read -r gguf var < <("$PY" -c "from dsa_core.models import PACKAGED_MODELS, packaged_gguf_path
print(packaged_gguf_path('$model'), PACKAGED_MODELS['$model'].env)")
        echo "$model $var $(sha256sum < "$gguf" | cut -d' ' -f1)" >> "$out/base/models.txt"
        split -b 27M -d -a 2 "$gguf" "$out/$model.gguf.part"
        for part in "$out/$model".gguf.part*; do
            mkdir -p "$out/chunk$n" && mv "$part" "$out/chunk$n/"
            n=$((n + 1))
        done
    done
    du -sh "$out"/* ;;
install)
    src=$1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target ~/site \
        "$src"/base/whl/*.whl
    mkdir -p ~/data ~/models && cp -r "$src"/base/data/* ~/data/ && cp "$src"/base/models.txt ~/models/
    rm -rf ~/repo && mkdir -p ~/repo && cp -r app.py cli dsa_core bench storage ui tests pyproject.toml ~/repo/
    PYTHONPATH=~/site "$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__, \
torch.cuda.get_device_name())" ;;
chunk)
    cp "$1/chunk$2"/*.gguf.part* ~/models/ ;;
join)
    eval "$(exports)"
    while read -r model _ sha <&3; do
        cat ~/models/"$model".gguf.part* > ~/models/"$model".gguf  # two-digit suffixes: the glob's order is the file's
        echo "$sha  $HOME/models/$model.gguf" | sha256sum -c
        (cd ~/repo && "$PY" -c "
from dsa_core.models import load_model
from dsa_core.session import PruningSession
lm = load_model('$model')
ppl = PruningSession(lm, data_source='local').perplexity('wikitext2', 'test', 2048, 2)
print(f'dense $model, 2 test windows: perplexity {ppl:.2f}')
raise SystemExit(0 if ppl < 50 else 'misread: expected ~16 (Gemma 3 270M) or ~20 (SmolLM2) with transformers 5.23')")
    done 3< ~/models/models.txt ;;
env)
    exports ;;
job)
    name=$1 script=$2
    shift 2
    eval "$(exports)"
    mkdir -p ~/res
    cd ~/repo && (setsid nohup "$PY" "bench/$script" "$@" > ~/res/log_"$name".txt 2>&1 & echo $! > ~/res/pid_"$name")
    echo "started $name" ;;
poll)
    poll "${1:-6}" ;;
wait)
    while running; do
        pack
        sleep 15
    done
    poll "${1:-6}" ;;
*)
    echo "unknown verb $verb: prepare, install, chunk, join, env, job, poll or wait" >&2
    exit 1 ;;
esac

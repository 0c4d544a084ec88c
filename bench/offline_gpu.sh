#!/usr/bin/env bash
# The benchmarks on a GPU machine that cannot reach PyPI or the model hub, whose image has torch but not everything
# else, and that receives files only in parts of limited size: `prepare` (here, online) lays out in a folder the
# wheels the image lacks, the shipped WikiText-2 and Gemma 3 270M's GGUF file in chunks; on the GPU machine, from a
# checkout that holds that folder, `install` puts the wheels in ~/site, the data in ~/data and a snapshot of the code
# in ~/repo (jobs run from there, so the checkout may change under them), `chunk` keeps one chunk, `join` checks the
# joined file's sha256, converts it once and prints the dense perplexity: a model misread by another transformers
# (5.17 read Gemma 3 into a model of perplexity ~350) is caught before any search runs. `env` prints the exports
# the jobs need. `job` starts one benchmark in the background from ~/repo (setsid: it outlives the call, so one
# search runs while later calls carry files or poll) with its log in ~/res; `poll` prints each log's last lines and
# packs ~/res into $OUT, so that every poll brings the results so far back.
#
#   bench/offline_gpu.sh prepare .carry 9             # here: .carry/base (wheels, data), .carry/chunk0 ... chunk8
#   bench/offline_gpu.sh install .carry               # there, carrying .carry/base (22 MB) and .carry/chunk0
#   bench/offline_gpu.sh chunk .carry 0               # there; then two 28 MB chunks a call (a call carries 64 MiB)
#   bench/offline_gpu.sh join                         # there, once every chunk is in
#   eval "$(bench/offline_gpu.sh env)"; cd ~/repo; python3 bench/bench_search.py ...
#   bench/offline_gpu.sh job w60 bench_search.py run --out ~/res ...   # there: log in ~/res/log_w60.txt
#   sleep 240; bench/offline_gpu.sh poll 6                            # there: within 30 s of the last call's end
set -euo pipefail
# What the GPU image lacks of requirements.txt for the benchmarks (its transformers is older than the pin).
WHEELS="transformers==5.23.0 regex==2026.11.19 gguf==0.19.0 optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1
colorlog==6.12.0 mako==1.4.3 cmaes==0.13.1"
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}  # there: the image's, which has torch; here: the venv's
[ -x .venv/bin/python ] && PY=${PYTHON:-$PWD/.venv/bin/python}
exports() {
    echo "export PYTHONPATH=$HOME/site:$HOME/repo DSA_GEMMA_GGUF=$HOME/models/gemma.gguf DSA_DATA_DIR=$HOME/data" \
        "HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
}
verb=$1
shift
case $verb in
prepare)
    out=$1 chunks=$2
    mkdir -p "$out/base/whl" "$out/base/data"
    # shellcheck disable=SC2086  # one argument per wheel
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$out/base/whl" $WHEELS
    cp -r ../shared/data/wikitext-2 ../shared/data/wikitext-2-raw "$out/base/data/"
    gguf=$("$PY" -c \
        "from dsa_core.models import packaged_gguf_path; print(packaged_gguf_path('gemma3-270m'))")
    split -n "$chunks" -d -a 2 "$gguf" "$out/gemma.gguf.part"
    for part in "$out"/gemma.gguf.part*; do
        n=$((10#${part##*part}))
        mkdir -p "$out/chunk$n" && mv "$part" "$out/chunk$n/"
    done
    du -sh "$out"/* ;;
install)
    src=$1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target ~/site \
        "$src"/base/whl/*.whl
    mkdir -p ~/data ~/models && cp -r "$src"/base/data/* ~/data/
    rm -rf ~/repo && mkdir -p ~/repo && cp -r app.py cli dsa_core bench storage ui tests pyproject.toml ~/repo/
    PYTHONPATH=~/site "$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__, \
torch.cuda.get_device_name())" ;;
chunk)
    cp "$1/chunk$2"/gemma.gguf.part* ~/models/ ;;
join)
    cat ~/models/gemma.gguf.part* > ~/models/gemma.gguf  # two-digit suffixes: the glob's order is the file's
    echo "$GEMMA_SHA256  $HOME/models/gemma.gguf" | sha256sum -c
    eval "$(exports)"
    cd ~/repo && "$PY" -c "
from dsa_core.models import load_model
from dsa_core.session import PruningSession
lm = load_model('gemma3-270m')
ppl = PruningSession(lm, data_source='local').perplexity('wikitext2', 'test', 2048, 2)
print(f'dense Gemma 3 270M, 2 test windows: perplexity {ppl:.2f}')
raise SystemExit(0 if ppl < 50 else 'misread: expected ~16 (transformers 5.23)')" ;;
env)
    exports ;;
job)
    name=$1 script=$2
    shift 2
    eval "$(exports)"
    mkdir -p ~/res
    cd ~/repo && (setsid nohup "$PY" "bench/$script" "$@" > ~/res/log_"$name".txt 2>&1 &)
    echo "started $name" ;;
poll)
    for f in ~/res/log_*.txt; do  # progress bars end their lines with carriage returns
        echo "== $f" && tr '\r' '\n' < "$f" | grep -v '^$' | tail -n "${1:-6}"
    done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
    if pgrep -f 'bench/bench_' > /dev/null; then echo RUNNING; else echo IDLE; fi
    tar czf "${OUT:?the device tool sets OUT}/res.tgz" -C ~ res ;;
*)
    echo "unknown verb $verb: prepare, install, chunk, join, env, job or poll" >&2
    exit 1 ;;
esac

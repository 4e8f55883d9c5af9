#!/usr/bin/env bash
# Device-side stages of the live validation (bench/results/live_validation_h200.txt).
# Usage: bash bench/live_h200.sh STAGE   (run from the repository root on the GPU machine)
#        bash bench/live_h200.sh prep    (here, first: what the stages carry, under .carry/ and .whl/)
set -u
stage=$1
T0=$(date +%s)
# The code that runs is the commit in .carry/src (git archive HEAD), not the working tree.
R=$PWD
[ "$stage" = prep ] || cd .carry/src || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=/tmp/site:/tmp/tree
M=$HOME/m/SmolLM2-135M-Instruct.Q4_1.gguf
L=$R/.carry/run
P=$L/specbench-unseen.jsonl
W=/tmp/work
NEW=64
mkdir -p $W
elapsed() { echo $(( $(date +%s) - T0 )); }
tree() {  # the installed layout (lapsd.replay = replay/, ...) as links
  rm -rf /tmp/tree && mkdir -p /tmp/tree/lapsd
  for f in lapsd/*.py; do ln -s "$PWD/$f" "/tmp/tree/lapsd/$(basename "$f")"; done
  for d in replay predict tune collect integrations; do ln -s "$PWD/$d" "/tmp/tree/lapsd/$d"; done
}
lapsd() { python3 -P -m lapsd "$@"; }
matrix() {  # DRAFT NAME TUNE LOADS RUNS DEADLINE [bench_live options]
  local runs=${5/config/config=$L/$3/lapsd-config.json}
  python3 -P bench/bench_live.py --target $M --draft $1 --prompts $P --max-new-tokens $NEW \
    --n ${NREQ:-200} --loads $4 --runs $runs --predictor $L/predictor.skops \
    --oracle-trace $W/oracle-$2 --out $W/live-$2 --deadline-s $(( $6 - $(elapsed) )) "${@:7}"
}
pack() { tar -C $W -czf "$OUT/$1.tar.gz" "${@:2}" && ls -la "$OUT"; }

case $stage in
prep)  # here, with ../shared beside the checkout; .carry/ and .whl/ in .git/info/exclude
  cd "$R"
  lapsd() { .venv/bin/lapsd "$@"; }
  bash ../shared/tools/smollm2-for-device.sh .carry
  mkdir -p .carry/run
  # What the GPU image lacks, as wheels for its Python 3.12: two folders, each under 64 MiB.
  dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"; }
  dl .whl/a polars==2.1.0 polars-runtime-32==2.1.0
  dl .whl/b pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 \
    annotated-types==0.8.0 skops==0.16.0 prettytable==3.19.0 scikit-learn==1.9.1
  # Spec-Bench questions of the five categories the example SmolLM2 traces come from, minus the
  # prompts those traces (the tuning data) hold: 180 prompts the configs never saw.
  .venv/bin/python - <<'PY'
import json
import polars as pl
seen = set()
for d in ("smollm2-layers-28", "smollm2-ngram4"):
    seen |= set(pl.read_parquet(f"examples/{d}/requests.parquet")["request_id"].cast(str))
keep = {"translation", "summarization", "qa", "math_reasoning", "rag"}
with open("../shared/data/specbench_questions/question.jsonl") as f, \
        open(".carry/run/specbench-unseen.jsonl", "w") as out:
    for line in f:
        q = json.loads(line)
        if q["category"] in keep and str(q["question_id"]) not in seen:
            out.write(json.dumps(q) + "\n")
PY
  lapsd predict train --data examples/smollm2-layers-28 --no-embeddings \
    --tokenizer .carry/SmolLM2-135M-Instruct.Q4_1.gguf --out .carry/run/predictor.skops
  for t in ngram4 layers-28; do
    lapsd tune examples/smollm2-$t --predictor .carry/run/predictor.skops --out .carry/run/tune-$t
  done
  rm -rf .carry/src && mkdir -p .carry/src && git archive HEAD ':!examples' | tar -x -C .carry/src
  ;;
1)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site $R/.whl/a/*.whl || exit 1
  nvidia-smi -L
  python3 -c 'import torch, transformers, sklearn, scipy, numpy, polars; print(torch.__version__, transformers.__version__, sklearn.__version__, scipy.__version__, numpy.__version__, polars.__version__, torch.cuda.get_device_name(0))'
  ;;
2)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site $R/.whl/b/*.whl $R/.carry/wheels/*.whl || exit 1
  mkdir -p ~/m && cp $R/.carry/smollm2-a/part ~/m/a
  tree
  python3 -P -c 'import lapsd.collect.live, lapsd.predict.model, skops, sklearn, pydantic; print("imports ok", sklearn.__version__)'
  ;;
3)
  [ -f ~/m/a ] && cat ~/m/a $R/.carry/smollm2-b/part > $M && rm ~/m/a
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $M" | sha256sum -c - || exit 1
  tree
  for d in ngram:4 layers:28; do
    n=${d/:/}
    # Oracle traces carried from an earlier run of this stage (greedy decoding: same lengths).
    [ -d $L/oracle-$n ] && cp -r $L/oracle-$n $W/ && echo "oracle $d carried" && continue
    lapsd collect --target $M --draft $d --prompts $P --max-new-tokens $NEW --out $W/oracle-$n \
      2>&1 | grep -v -E "it/s|^\s*$" | tail -3
    echo "oracle $d done at $(elapsed) s"
  done
  lapsd inspect $W/oracle-ngram4 | head -12
  lapsd inspect $W/oracle-layers28 | head -12
  pack oracles oracle-ngram4 oracle-layers28
  matrix ngram:4 ngram4 tune-ngram4 0.9,0.5 config,lp-srpt,fcfs,srpt-oracle 560
  pack ngram4 live-ngram4
  ;;
4)
  matrix layers:28 layers28 tune-layers-28 0.9 config,lp-srpt,fcfs,srpt-oracle ${DEADLINE:-470}
  pack layers28 live-layers28
  for d in ngram:4 layers:28; do
    lapsd collect-profile --target $M --draft $d --contexts 128,256,512 \
      --out $W/profile-${d/:/}.json 2>&1 | grep -v -E "it/s|^\s*$" | tail -2
  done
  python3 -P bench/bench_collect.py --target $M --prompts $P --drafts ngram:4,layers:28 --n 10 \
    --max-new-tokens $NEW --k 4 2>&1 | grep -v -E "it/s|^\s*$" | tee $W/bench_collect.txt
  pack extras profile-ngram4.json profile-layers28.json bench_collect.txt
  ;;
3b)  # ngram:4 load 0.5 runs that stage 3's deadline skipped, at stage 3's capacity
  python3 -P bench/bench_live.py --target $M --draft ngram:4 --prompts $P --max-new-tokens $NEW \
    --n 200 --loads 0.5 --runs ${RUNS:-fcfs,srpt-oracle} --predictor $L/predictor.skops \
    --oracle-trace $W/oracle-ngram4 --out $W/live-ngram4b --deadline-s ${DEADLINE:-250} \
    --capacity-from $W/live-ngram4/config-load0.9
  pack ngram4b live-ngram4b
  ;;
5)
  matrix layers:28 layers28 tune-layers-28 0.5 ${RUNS:-config,fcfs} ${DEADLINE:-560} \
    --capacity-from $W/live-layers28/config-load0.9
  pack layers28-05 live-layers28
  ;;
b)  # batch sizes above one (bench/results/live_batch_h200.txt), after 1 and 2; carries as 3
  [ -f ~/m/a ] && cat ~/m/a $R/.carry/smollm2-b/part > $M && rm ~/m/a
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $M" | sha256sum -c - || exit 1
  tree
  for n in ngram4 layers28; do cp -r $L/oracle-$n $W/; done
  for d in ngram:4 layers:28; do
    lapsd collect-profile --target $M --draft $d --contexts 128,512 --capacity 2048 \
      --batches 1,2,4,8,16,32,64 --out $W/profile-${d/:/}-batch.json 2>&1 \
      | grep -v -E "it/s|^\s*$" | tail -2
    echo "profile $d done at $(elapsed) s"
  done
  pack profiles profile-ngram4-batch.json profile-layers28-batch.json
  for B in 4 8; do
    NREQ=${NREQ:-200} matrix ngram:4 ngram4 tune-ngram4 $(( B * 3 / 4 )) \
      config,lp-srpt,fcfs,srpt-oracle ${DEADLINE:-560} --batch-size $B
    mv $W/live-ngram4 $W/live-ngram4-b$B
  done
  pack ngram4-batch live-ngram4-b4 live-ngram4-b8
  ;;
b2)  # layers:28 at batch sizes 4 and 8
  for B in 4 8; do
    NREQ=${NREQ:-100} matrix layers:28 layers28 tune-layers-28 $(( B * 3 / 4 )) \
      config,lp-srpt,fcfs,srpt-oracle ${DEADLINE:-560} --batch-size $B
    mv $W/live-layers28 $W/live-layers28-b$B
  done
  pack layers28-batch live-layers28-b4 live-layers28-b8
  ;;
c)  # batch-1 collections by this engine, and batched runs at moderate load (lapsd validate
    # --rounds-from): after 1 and 2; carries as 3
  [ -f ~/m/a ] && cat ~/m/a $R/.carry/smollm2-b/part > $M && rm ~/m/a
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $M" | sha256sum -c - || exit 1
  tree
  for d in ngram:4 layers:28; do
    lapsd collect --target $M --draft $d --prompts $P --max-new-tokens $NEW --out $W/coll-${d/:/} \
      2>&1 | grep -v -E "it/s|^\s*$" | tail -1
    echo "collection $d done at $(elapsed) s"
  done
  pack collections coll-ngram4 coll-layers28
  for B in 4 8; do
    NREQ=200 matrix ngram:4 ngram4 tune-ngram4 $(( B / 2 )) fcfs,lp-srpt 560 --batch-size $B
    mv $W/live-ngram4 $W/mod-ngram4-b$B
  done
  pack mod-ngram4 mod-ngram4-b4 mod-ngram4-b8
  ;;
c2)  # layers:28 at moderate load
  for B in 4 8; do
    NREQ=100 matrix layers:28 layers28 tune-layers-28 $(( B / 2 )) fcfs,lp-srpt 560 --batch-size $B
    mv $W/live-layers28 $W/mod-layers28-b$B
  done
  pack mod-layers28 mod-layers28-b4 mod-layers28-b8
  ;;
esac
echo "stage $stage took $(elapsed) s"

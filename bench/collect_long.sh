#!/usr/bin/env bash
# Long-output collections of SmolLM2-135M-Instruct on one GPU (issue 22, section 1):
# max_new_tokens 1024, natural stops, every prompt set in ../shared/data, ngram:4 (with hidden
# states) and layers:28, batched (--batch-size), plus batch-1 samples that check the profiled
# round times and measure what recording states costs.
#
# Usage: bash bench/collect_long.sh prep      here, first (needs ../shared): fills .carry/, .whl/
#        then on the GPU machine, back to back (it keeps its disk ~30 s between calls):
#        bash bench/collect_long.sh 1          carry .carry/smollm2-a
#        bash bench/collect_long.sh polars     carry .whl/a (the model half and polars' 54 MB
#                                              runtime wheel do not fit one call's 64 MiB)
#        bash bench/collect_long.sh 2          carry .carry/smollm2-b .carry/wheels .whl/b
#                                              .carry/src .carry/long; starts the jobs, waits
#        bash bench/collect_long.sh wait       waits for the jobs (call again while they run)
#        bash bench/collect_long.sh pack       the traces into $OUT (states split in 15 MiB parts)
# Environment: B (batch size, 64), LIMIT (prompts per collection, all), SAMPLE (every SAMPLE-th
# prompt for the batch-1 samples, 126), DEADLINE_S (seconds a call waits, 540), WHAT (the
# collections, in order: coll-ngram4 one-ngram4 one-ngram4-states coll-layers28 one-layers28).
set -u
stage=$1
T0=$(date +%s)
R=$PWD
M=${M:-$HOME/m/SmolLM2-135M-Instruct.Q4_1.gguf}
P=${P:-$R/.carry/long/prompts.jsonl}
W=${W:-/tmp/work}
B=${B:-64}
SAMPLE=${SAMPLE:-126}
NEW=${NEW:-1024}
WHAT=${WHAT:-coll-ngram4 one-ngram4 one-ngram4-states coll-layers28 one-layers28}
mkdir -p "$W"
. "$(dirname "$0")/device_lib.sh"
lapsd() { python3 -P -m lapsd "$@"; }
collect() {  # NAME DRAFT [options]
  local name=$1 draft=$2
  shift 2
  echo "== $name ($draft $*) from $(elapsed) s"
  lapsd collect --target "$M" --draft "$draft" --prompts "$P" --max-new-tokens "$NEW" \
    --chunk-size 100 --out "$W/$name" ${LIMIT:+--limit $LIMIT} "$@" 2>&1 \
    | grep -v -E "it/s|^\s*$"
  echo "== $name done at $(elapsed) s"
}

case $stage in
prep)  # here
  prep_model_and_wheels
  mkdir -p .carry/long
  .venv/bin/python bench/long_prompts.py ../shared/data .carry/long/prompts.jsonl
  carried_src
  ;;
1)
  gpu_and_first_half
  ;;
polars)
  polars_stage || exit 1
  ;;
2)
  start_jobs 'lapsd.collect.run, pydantic, polars' || exit 1
  ;;
jobs)  # in the background (started by stage 2); order: what matters most first
  tree
  for name in $WHAT; do
    case $name in
    coll-ngram4) collect "$name" ngram:4 --batch-size "$B" --states --states-every 32 ;;
    one-ngram4) collect "$name" ngram:4 --shard "0/$SAMPLE" ;;
    one-ngram4-states) collect "$name" ngram:4 --shard "0/$SAMPLE" --states --states-every 16 ;;
    coll-layers28) collect "$name" layers:28 --batch-size "$B" ;;
    one-layers28) collect "$name" layers:28 --shard "0/$(( SAMPLE * 2 ))" ;;
    *) echo "unknown collection $name (WHAT)" ;;
    esac
  done
  touch "$W/jobs.done"
  ;;
wait)
  wait_jobs
  ;;
pack)
  tree
  cd "$W" || exit 1
  for d in coll-ngram4 coll-layers28 one-ngram4 one-ngram4-states one-layers28; do
    [ -d "$d" ] || continue
    lapsd merge "$d" --out "m-$d" --force > /dev/null || { echo "merge of $d failed"; continue; }
    [ -f "m-$d/states.parquet" ] && mv "m-$d/states.parquet" "states-$d.parquet"
  done
  tar -czf "$OUT/traces.tar.gz" m-* jobs.log
  for s in states-*.parquet; do
    [ -f "$s" ] && split -b 15M -d "$s" "$OUT/$s.part"
  done
  ls -la "$OUT"
  ;;
esac
echo "stage $stage took $(elapsed) s"

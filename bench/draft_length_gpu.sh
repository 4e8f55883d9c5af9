#!/usr/bin/env bash
# Derived rounds at a shorter draft length against real ones (issue 26's first goal):
# SmolLM2-135M-Instruct, layers:28, max_new_tokens 1024, greedy, on the prompts of
# examples/smollm2-layers-28 (collected at k = 4): batched collections at k = 2 and k = 4 (rounds
# per request; the k = 4 one on the same GPU as the k = 2 one), and batch-1 samples at k = 2 and
# k = 4 (measured round times).
#
# Usage: bash bench/draft_length_gpu.sh prep    here, first (needs ../shared): .carry/, .whl/
#        then on the GPU machine, back to back (it keeps its disk ~30 s between calls):
#        bash bench/draft_length_gpu.sh 1        carry .carry/smollm2-a
#        bash bench/draft_length_gpu.sh polars   carry .whl/a
#        bash bench/draft_length_gpu.sh 2        carry .carry/smollm2-b .carry/wheels .whl/b
#                                                .carry/src .carry/dl; starts the jobs, waits
#        bash bench/draft_length_gpu.sh wait     waits for the jobs (call again while they run)
#        bash bench/draft_length_gpu.sh pack     the traces into $OUT
#        then here: python bench/draft_length_check.py DIR (the unpacked traces)
# Environment: B (batch size, 64), SAMPLE (every SAMPLE-th prompt for the batch-1 samples, 12),
# DEADLINE_S (seconds a call waits, 540).
set -u
stage=$1
T0=$(date +%s)
R=$PWD
M=$HOME/m/SmolLM2-135M-Instruct.Q4_1.gguf
P=$R/.carry/dl/prompts.jsonl
W=${W:-/tmp/work}
B=${B:-64}
SAMPLE=${SAMPLE:-12}
mkdir -p "$W"
. "$(dirname "$0")/device_lib.sh"
collect() {  # NAME K [options]
  local name=$1 k=$2
  shift 2
  echo "== $name (k=$k $*) from $(elapsed) s"
  python3 -P -m lapsd collect --target "$M" --draft layers:28 --k "$k" --prompts "$P" \
    --max-new-tokens 1024 --chunk-size 100 --out "$W/$name" "$@" 2>&1 | grep -v -E "it/s|^\s*$"
  echo "== $name done at $(elapsed) s"
}

case $stage in
prep)  # here
  prep_model_and_wheels
  mkdir -p .carry/dl
  .venv/bin/python - <<'PY'
import json, polars as pl
q = pl.read_parquet("examples/smollm2-layers-28/requests.parquet")
rows = [{"id": r["request_id"], "prompt": r["prompt"], "category": r["category"],
         "dataset": r["dataset"]} for r in q.iter_rows(named=True)]
open(".carry/dl/prompts.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
print(len(rows), "prompts")
PY
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
jobs)  # in the background (started by stage 2)
  tree
  collect coll-k2 2 --batch-size "$B"
  collect coll-k4 4 --batch-size "$B"
  collect one-k2 2 --shard "0/$SAMPLE"
  collect one-k4 4 --shard "0/$SAMPLE"
  touch "$W/jobs.done"
  ;;
wait)
  wait_jobs
  ;;
pack)
  tree
  cd "$W" || exit 1
  for d in coll-k2 coll-k4 one-k2 one-k4; do
    [ -d "$d" ] && python3 -P -m lapsd merge "$d" --out "m-$d" --force > /dev/null
  done
  tar -czf "$OUT/traces.tar.gz" m-* jobs.log
  ls -la "$OUT"
  ;;
esac
echo "stage $stage took $(elapsed) s"

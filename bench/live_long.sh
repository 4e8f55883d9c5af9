#!/usr/bin/env bash
# Live runs at long outputs on one GPU (issue 22, section 5: the probe's value confirmed live),
# and the rest of the shippable layers:28 collection. SmolLM2-135M-Instruct, ngram:4,
# max_new_tokens 1024, batch size 1, Poisson load 0.9, N requests drawn from the prompts held
# out of tuning; fcfs, the prompt-only predictor and the probe (each request prefilled on
# arrival, re-predicted every G tokens), each run on the same arrivals.
#
# Usage: bash bench/live_long.sh prep        here, first (needs ../shared, /tmp/pv from
#                                            bench/policy_value_long.py, /work/data/long)
#        then on the GPU machine, back to back:
#        bash bench/live_long.sh 1           carry .carry/smollm2-a .whl/c
#        bash bench/live_long.sh polars      carry .whl/a
#        bash bench/live_long.sh 2           carry .carry/smollm2-b .carry/wheels .whl/b
#                                            .carry/src .carry/live; starts the jobs, waits
#        bash bench/live_long.sh wait        waits for the jobs (call again while they run)
#        bash bench/live_long.sh pack        the runs and the trace into $OUT
# Environment: N (requests per run, 200), LOAD (0.9), RUNS (bench_live.py --runs),
# DEADLINE_S (seconds a call waits, 540), LIVE_S (seconds the live matrix may take, 900),
# CAPACITY_FROM (a live run folder, its live.json enough: its capacity and so its arrivals; or
# .carry/live/capacity, the collection the prompts came from).
set -u
stage=$1
T0=$(date +%s)
R=$PWD
M=$HOME/m/SmolLM2-135M-Instruct.Q4_1.gguf
L=$R/.carry/live
W=${W:-/tmp/work}
N=${N:-200}
LOAD=${LOAD:-0.9}
RUNS=${RUNS:-fcfs,config=$L/config-probe.json@probe,lp-srpt,lp-srpt@probe,config=$L/config-prompt.json}
mkdir -p "$W"
. "$(dirname "$0")/device_lib.sh"

case $stage in
prep)  # here
  prep_model_and_wheels
  dl .whl/c skops==0.16.0 prettytable==3.19.0 scikit-learn==1.9.1
  [ -f .carry/long/prompts.jsonl ] || .venv/bin/python bench/long_prompts.py ../shared/data .carry/long/prompts.jsonl
  OMP_NUM_THREADS=1 .venv/bin/python bench/live_long_prep.py /work/data/long/m-coll-ngram4 \
    .carry/long/prompts.jsonl /tmp/pv .carry/live \
    $([ -d /work/data/long/m-coll-layers28 ] && echo --layers28 /work/data/long/m-coll-layers28)
  # the collection without its states: CAPACITY_FROM=.carry/live/capacity takes the load's
  # reference capacity from it (the prompts' mean service), not from a warm-up
  mkdir -p .carry/live/capacity
  cp /work/data/long/m-coll-ngram4/{manifest.json,requests.parquet,rounds.parquet} .carry/live/capacity/
  # without states.parquet, its manifest's states block must go too (read_trace refuses it)
  .venv/bin/python -c 'import json, sys; p = sys.argv[1]; m = json.load(open(p)); m.pop("states", None); json.dump(m, open(p, "w"), indent=1)' .carry/live/capacity/manifest.json
  gzip -f .carry/live/*.skops  # skops files are stored uncompressed: 12 MB -> 3 MB of the call's 64
  carried_src
  du -sh .carry/smollm2-a .whl/c .whl/a .carry/smollm2-b .carry/wheels .whl/b .carry/src .carry/live
  ;;
1)
  install "$R"/.whl/c/*.whl || exit 1
  gpu_and_first_half
  ;;
polars)
  polars_stage || exit 1
  ;;
2)
  gunzip -f "$L"/*.skops.gz
  start_jobs 'lapsd.collect.live, lapsd.predict.probe, sklearn, skops, polars' || exit 1
  ;;
jobs)  # in the background (started by stage 2)
  tree
  echo "== live matrix from $(elapsed) s"
  python3 -P "$R/.carry/src/bench/bench_live.py" --target "$M" --draft ngram:4 \
    --prompts "$L/heldout.jsonl" --max-new-tokens 1024 --n "$N" --loads "$LOAD" \
    --runs "$RUNS" --predictor "$L/predictor.skops" --probe "$L/probe.skops" --warmup 32 \
    --out "$W/live" --deadline-s "${LIVE_S:-900}" ${CAPACITY_FROM:+--capacity-from "$CAPACITY_FROM"} \
    2>&1 | grep -v -E "it/s|^\s*$"
  echo "== live matrix done at $(elapsed) s"
  if [ -s "$L/layers28-rest.jsonl" ]; then
    python3 -P -m lapsd collect --target "$M" --draft layers:28 --prompts "$L/layers28-rest.jsonl" \
      --max-new-tokens 1024 --batch-size 64 --chunk-size 100 --out "$W/coll-layers28-rest" 2>&1 \
      | grep -v -E "it/s|^\s*$"
    echo "== layers:28 rest done at $(elapsed) s"
  fi
  touch "$W/jobs.done"
  ;;
wait)
  wait_jobs
  ;;
pack)
  tree
  cd "$W" || exit 1
  [ -d coll-layers28-rest ] && python3 -P -m lapsd merge coll-layers28-rest --out m-layers28-rest --force > /dev/null
  # the runs' states tables (MBs each) apart, in parts under the per-file limit
  tar -czf "$OUT/live.tar.gz" --exclude=states.parquet live jobs.log $(ls -d m-layers28-rest 2>/dev/null)
  find live -name states.parquet | tar -cf - -T - | split -b 15M -d - "$OUT/states.tar.part"
  ls -la "$OUT"
  ;;
esac
echo "stage $stage took $(elapsed) s"

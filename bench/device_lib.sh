# Shell helpers of the GPU-machine scripts (bench/collect_long.sh, bench/live_long.sh), sourced
# after they set T0 (start time), R (the repository copy) and W (their work folder).
# The code that runs on the device is the commit in .carry/src (git archive HEAD), linked into
# the installed layout; wheels go to /tmp/site.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=/tmp/site:/tmp/tree
elapsed() { echo $(( $(date +%s) - T0 )); }
tree() {  # the installed layout (lapsd.replay = replay/, ...) as links, from the carried commit
  rm -rf /tmp/tree && mkdir -p /tmp/tree/lapsd
  for f in "$R"/.carry/src/lapsd/*.py; do ln -s "$f" "/tmp/tree/lapsd/$(basename "$f")"; done
  for d in replay predict tune collect integrations; do ln -s "$R/.carry/src/$d" "/tmp/tree/lapsd/$d"; done
}
wait_jobs() {  # until $W/jobs.done or DEADLINE_S seconds since T0
  local deadline=${DEADLINE_S:-540}
  while [ ! -f "$W/jobs.done" ] && [ "$(elapsed)" -lt "$deadline" ]; do sleep 5; done
  tail -n 25 "$W/jobs.log"
  [ -f "$W/jobs.done" ] && echo "jobs finished" || echo "jobs still running at $(elapsed) s"
}
dl() {  # here: wheels for the GPU image's Python 3.12 into folder $1
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
install() {  # there: wheels into /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$@"
}
gpu_and_first_half() {  # stage 1: the model's first half (.carry/smollm2-a), what the GPU is
  mkdir -p ~/m && cp "$R"/.carry/smollm2-a/part ~/m/a
  nvidia-smi -L
  python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))'
}
polars_stage() {  # polars' wheels (.whl/a) alone: with half the model they pass 64 MiB
  install "$R"/.whl/a/*.whl || return 1
  python3 -c 'import polars; print("polars", polars.__version__)'
}
whole_model() {  # stage 2: the model's halves joined into $M and checked
  [ -f ~/m/a ] && cat ~/m/a "$R"/.carry/smollm2-b/part > "$M" && rm ~/m/a
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $M" | sha256sum -c -
}
carried_src() {  # here: the commit the device runs (.carry/src), without the example traces
  rm -rf .carry/src && mkdir -p .carry/src && git archive HEAD ':!examples' | tar -x -C .carry/src
}
start_jobs() {  # stage 2: the rest of the model and the wheels, import check $1, then the calling
  # script's "jobs" stage in the background (it outlives the call); waits for it
  install "$R"/.whl/b/*.whl "$R"/.carry/wheels/*.whl || return 1
  whole_model || return 1
  tree
  python3 -P -c "import $1; print('imports ok')" || return 1
  rm -f "$W/jobs.done"
  setsid nohup bash "$R/bench/$(basename "$0")" jobs > "$W/jobs.log" 2>&1 < /dev/null &
  wait_jobs
}
prep_model_and_wheels() {  # here: the model (.carry), polars (.whl/a), pydantic (.whl/b)
  bash ../shared/tools/smollm2-for-device.sh .carry
  dl .whl/a polars==2.1.0 polars-runtime-32==2.1.0
  dl .whl/b pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
}

# shellcheck shell=bash
# shellcheck disable=SC2034  # a library: it sets globals (TTT_GPUS, TTT_HOSTS, ...) that the scripts read
# slurm/common.sh: sourced by every slurm/*.sbatch script (see slurm/README.md); not run on its own.
#
# What it gives the scripts:
#   - dry run (TTT_DRY_RUN=1): every command is printed as one fully expanded, copy-pastable line starting
#     with "+ " (shell-quoted like Python's shlex.quote) and nothing is run; in a real run the same lines are
#     printed (into the Slurm output file) and then run;
#   - per-component logs: every long-running component writes to $TTT_OUT/logs/<component>-<node>.log;
#   - health waits: vLLM servers (curl .../health) and the Ray head (ray health-check) before the learner;
#   - the preemption trap: on SIGTERM (or SIGUSR1) the batch shell forwards SIGTERM to the learner
#     process(es), waits for them to write their checkpoint (bounded by TTT_STOP_TIMEOUT), stops the
#     services (vLLM servers, Ray) and runs `scontrol requeue $SLURM_JOB_ID`; the requeued job runs the same
#     command with resume=true and continues from the latest checkpoint in $TTT_OUT.
#
# Environment (all optional; the scripts document their own variables):
#   TTT_DRY_RUN=0|1            1: print, run nothing (also works outside Slurm)
#   TTT_DRY_HOSTS="n1 n2 ..."  the job's hosts (instead of `scontrol show hostnames $SLURM_JOB_NODELIST`);
#                              in a dry run without SLURM_JOB_NODELIST it defaults to node1..nodeN
#                              (N = SLURM_JOB_NUM_NODES, else 4)
#   TTT_OUT                    run directory (logs under $TTT_OUT/logs); must be on a shared filesystem
#   TTT_VENV                   a venv whose bin/ goes first on PATH (else ttt/accelerate/ray come from PATH)
#   TTT_BIN, ACCELERATE_BIN, RAY_BIN   the executables (default ttt, accelerate, ray)
#   TTT_REQUEUE=1              0: never requeue on a signal
#   TTT_MAX_REQUEUES           stop requeueing once SLURM_RESTART_COUNT reaches this (default: no limit)
#   TTT_STOP_TIMEOUT=100       seconds the learner gets after SIGTERM before SIGKILL (keep below the
#                              --signal lead time, 120 s in the headers)
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT=90  what torchrun (under accelerate) gives its workers after SIGTERM
#   TTT_SERVICE_STOP_TIMEOUT=10        seconds the services get after SIGTERM
#   TTT_VLLM_TIMEOUT=1800, TTT_RAY_TIMEOUT=600, TTT_VERIFIER_WAIT=1800   start-up time limits (seconds)
#   TTT_SRUN_ARGS              extra srun options for every step (e.g. "--mpi=none", "--gres=gpu:8")
#   RAY_AUTH_MODE=disabled, RAY_TMPDIR=/tmp/ray_$UID   exported for ray start and the loop's ray.init
#                              (the same defaults as envs/pool.py; set RAY_AUTH_MODE=token + RAY_AUTH_TOKEN
#                              to require a token on a shared network)

ttt_log() { printf 'ttt-slurm %s: %s\n' "$(date '+%F %T')" "$*" >&2; }

ttt_dry() { [[ ${TTT_DRY_RUN:-0} == 1 ]]; }

# Quote each argument like Python's shlex.quote and join them with spaces.
ttt_quote() {
  local out=() a q="'\\''"
  for a in "$@"; do
    if [[ -n $a && $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/$q}'")
    fi
  done
  local IFS=' '
  printf '%s' "${out[*]}"
}

# Print a command as one "+ " line.
ttt_show() { printf '+ %s\n' "$(ttt_quote "$@")"; }

# Print a command, then run it in the foreground unless this is a dry run.
ttt_run() {
  ttt_show "$@"
  ttt_dry || "$@"
}

# Split a whitespace-separated string into the array named by $1.
ttt_words() {
  local -n _ttt_arr=$1
  _ttt_arr=()
  [[ -n ${2:-} ]] && read -r -a _ttt_arr <<<"$2"
  return 0
}

# Stop with an error: in a real run everything started so far is stopped first.
ttt_fail() {
  ttt_log "error: $*"
  if ! ttt_dry; then
    trap '' TERM USR1
    ttt_stop_pids "${TTT_STOP_TIMEOUT}" "${TTT_MAIN_PIDS[@]}"
    ttt_stop_services
    ttt_cleanup_files
  fi
  exit 1
}

# ttt_init SCRIPT DEFAULT_OUT: defaults (%j in DEFAULT_OUT becomes the job id, as in Slurm's file names),
# the run and log directories, exports, the signal trap.
ttt_init() {
  TTT_SCRIPT=$1
  TTT_DRY_RUN=${TTT_DRY_RUN:-0}
  if ttt_dry; then
    SLURM_JOB_ID=${SLURM_JOB_ID:-dryrun}
  fi
  SLURM_JOB_ID=${SLURM_JOB_ID:-local}
  TTT_OUT=${TTT_OUT:-${2//%j/$SLURM_JOB_ID}}
  [[ $TTT_OUT == /* ]] || TTT_OUT=$PWD/$TTT_OUT
  TTT_LOG_DIR=$TTT_OUT/logs
  TTT_REQUEUE=${TTT_REQUEUE:-1}
  TTT_STOP_TIMEOUT=${TTT_STOP_TIMEOUT:-100}
  TTT_SERVICE_STOP_TIMEOUT=${TTT_SERVICE_STOP_TIMEOUT:-10}
  TTT_VLLM_TIMEOUT=${TTT_VLLM_TIMEOUT:-1800}
  TTT_RAY_TIMEOUT=${TTT_RAY_TIMEOUT:-600}
  TTT_VERIFIER_WAIT=${TTT_VERIFIER_WAIT:-1800}
  if [[ -n ${TTT_VENV:-} ]]; then
    PATH=$TTT_VENV/bin:$PATH
  fi
  TTT_BIN=${TTT_BIN:-ttt}
  ACCELERATE_BIN=${ACCELERATE_BIN:-accelerate}
  RAY_BIN=${RAY_BIN:-ray}
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
  RAY_TMPDIR=${RAY_TMPDIR:-/tmp/ray_$(id -u)}
  export RAY_TMPDIR
  export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-90}
  export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
  export PYTHONUNBUFFERED=1
  TTT_MAIN_PIDS=() TTT_MAIN_NAMES=() TTT_SVC_PIDS=() TTT_SVC_NAMES=() TTT_CLEANUP=()
  ttt_log "$TTT_SCRIPT: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}), run dir $TTT_OUT$(ttt_dry && echo ', DRY RUN: nothing is started')"
  ttt_run mkdir -p "$TTT_LOG_DIR"
  if ! ttt_dry; then
    trap 'ttt_on_signal TERM' TERM
    trap 'ttt_on_signal USR1' USR1
  fi
}

# Expand a Slurm node list ("n[1-3],m2") into one host per line.
ttt_expand_nodelist() {
  local list=$1
  if [[ $list != *'['* ]]; then
    tr ',' '\n' <<<"$list" | tr -d ' ' | sed '/^$/d'
  elif command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$list"
  else
    ttt_fail "cannot expand node list '$list' without scontrol; set TTT_DRY_HOSTS=\"n1 n2 ...\""
  fi
}

# The job's hosts into the array TTT_HOSTS (the batch shell runs on the first one).
ttt_job_hosts() {
  if [[ -z ${TTT_DRY_HOSTS:-} ]] && ttt_dry && [[ -z ${SLURM_JOB_NODELIST:-} ]]; then
    TTT_DRY_HOSTS=$(seq -f 'node%g' 1 "${SLURM_JOB_NUM_NODES:-4}" | tr '\n' ' ')
  fi
  if [[ -n ${TTT_DRY_HOSTS:-} ]]; then
    ttt_words TTT_HOSTS "$TTT_DRY_HOSTS"
  elif [[ -n ${SLURM_JOB_NODELIST:-} ]]; then
    mapfile -t TTT_HOSTS < <(ttt_expand_nodelist "$SLURM_JOB_NODELIST")
  else
    ttt_fail "no SLURM_JOB_NODELIST: submit with sbatch, or set TTT_DRY_HOSTS=\"n1 n2 ...\" for a dry run"
  fi
  ((${#TTT_HOSTS[@]} > 0)) || ttt_fail "the job has no hosts"
}

# The node the batch shell runs on (single-node scripts).
ttt_this_node() {
  if [[ -n ${TTT_DRY_HOSTS:-} ]]; then
    local hosts
    ttt_words hosts "$TTT_DRY_HOSTS"
    printf '%s' "${hosts[0]}"
  elif [[ -n ${SLURMD_NODENAME:-} ]]; then
    printf '%s' "$SLURMD_NODENAME"
  elif ttt_dry; then
    printf 'node1'
  else
    hostname -s
  fi
}

# ttt_srun HOST [CPUS] [HET_GROUP]: the srun prefix for one task on HOST, into the array TTT_SRUN.
# --overlap: several steps share a node (vLLM servers, a Ray node, the learner); GPUs are split with
# CUDA_VISIBLE_DEVICES set inside the step (Slurm would overwrite one set outside it).
ttt_srun() {
  local extra=()
  ttt_words extra "${TTT_SRUN_ARGS:-}"
  TTT_SRUN=(srun --nodes=1 --ntasks=1 "--nodelist=$1" --overlap)
  [[ -n ${2:-} ]] && TTT_SRUN+=("--cpus-per-task=$2")
  [[ -n ${3:-} ]] && TTT_SRUN+=("--het-group=$3")
  TTT_SRUN+=("${extra[@]}")
}

# ttt_start NAME main|service CMD...: run CMD in the background with its output appended to
# $TTT_LOG_DIR/NAME.log. "main" processes are the learner(s): the job waits for them and forwards SIGTERM
# to them; "service" processes (vLLM, Ray) are stopped when the main ones are done.
ttt_start() {
  local name=$1 role=$2 log="$TTT_LOG_DIR/$1.log"
  shift 2
  printf '+ %s >> %s 2>&1 &\n' "$(ttt_quote "$@")" "$(ttt_quote "$log")"
  TTT_LAST_PID=
  ttt_dry && return 0
  printf '=== ttt-slurm %s: job %s restart %s: %s\n' "$(date '+%F %T')" "$SLURM_JOB_ID" \
    "${SLURM_RESTART_COUNT:-0}" "$(ttt_quote "$@")" >>"$log"
  "$@" >>"$log" 2>&1 </dev/null &
  TTT_LAST_PID=$!
  if [[ $role == main ]]; then
    TTT_MAIN_PIDS+=("$TTT_LAST_PID") TTT_MAIN_NAMES+=("$name")
  else
    TTT_SVC_PIDS+=("$TTT_LAST_PID") TTT_SVC_NAMES+=("$name")
  fi
  ttt_log "started $name (pid $TTT_LAST_PID), log $log"
}

# Sleep that a signal interrupts at once (the trap runs between commands).
ttt_sleep() {
  sleep "$1" &
  TTT_SLEEP_PID=$!
  wait "$TTT_SLEEP_PID" 2>/dev/null
  TTT_SLEEP_PID=
}

# ttt_wait_http URL PID NAME: until URL/health answers 200; fail if PID dies or TTT_VLLM_TIMEOUT passes.
ttt_wait_http() {
  local url=$1 pid=$2 name=$3 start=$SECONDS
  local cmd=(curl --silent --fail --noproxy '*' --max-time 5 --output /dev/null "$url/health")
  ttt_show "${cmd[@]}"
  ttt_dry && return 0
  until "${cmd[@]}"; do
    kill -0 "$pid" 2>/dev/null || ttt_fail "$name exited before $url was healthy; see $TTT_LOG_DIR/$name.log"
    ((SECONDS - start < TTT_VLLM_TIMEOUT)) ||
      ttt_fail "$name not healthy at $url after $TTT_VLLM_TIMEOUT s; see $TTT_LOG_DIR/$name.log"
    ttt_sleep 5
  done
  ttt_log "$name is healthy at $url ($((SECONDS - start)) s)"
}

# ttt_wait_ray ADDRESS [PID NAME]: until the Ray GCS at ADDRESS answers.
ttt_wait_ray() {
  local addr=$1 pid=${2:-} name=${3:-ray} start=$SECONDS
  local cmd=(timeout 20 "$RAY_BIN" health-check --address "$addr")
  ttt_show "${cmd[@]}"
  ttt_dry && return 0
  until "${cmd[@]}" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      ttt_fail "$name exited before Ray at $addr was up; see $TTT_LOG_DIR/$name.log"
    fi
    ((SECONDS - start < TTT_RAY_TIMEOUT)) || ttt_fail "Ray at $addr not up after $TTT_RAY_TIMEOUT s"
    ttt_sleep 3
  done
  ttt_log "Ray at $addr is up ($((SECONDS - start)) s)"
}

# The external verifier cluster, if any, into TTT_VERIFIER (HOST:PORT; empty: none):
# TTT_VERIFIER_ADDRESS, else the contents of TTT_VERIFIER_ADDRESS_FILE (written by
# slurm/verifier_cluster.sbatch; waited for up to TTT_VERIFIER_WAIT seconds).
ttt_external_verifier() {
  TTT_VERIFIER=${TTT_VERIFIER_ADDRESS:-}
  local file=${TTT_VERIFIER_ADDRESS_FILE:-} start=$SECONDS
  [[ -n $TTT_VERIFIER || -z $file ]] && return 0
  if ttt_dry; then
    if [[ -s $file ]]; then
      TTT_VERIFIER=$(<"$file")
    else
      TTT_VERIFIER="<contents of $file>"
    fi
    return 0
  fi
  until [[ -s $file ]]; do
    ((SECONDS - start < TTT_VERIFIER_WAIT)) ||
      ttt_fail "no verifier address in $file after $TTT_VERIFIER_WAIT s (is slurm/verifier_cluster.sbatch running?)"
    ttt_sleep 5
  done
  TTT_VERIFIER=$(<"$file")
  TTT_VERIFIER=${TTT_VERIFIER//[[:space:]]/}
  ttt_log "verifier cluster from $file: $TTT_VERIFIER"
}

# ttt_train_args OVERRIDE...: the `ttt train` overrides into TTT_TRAIN_ARGS: the experiment, out, resume,
# the model, then the script's own, then TTT_OVERRIDES (last, so the user's win).
ttt_train_args() {
  local user=()
  ttt_words user "${TTT_OVERRIDES:-}"
  TTT_TRAIN_ARGS=()
  [[ -n ${TTT_EXPERIMENT:-} ]] && TTT_TRAIN_ARGS+=("+experiment=$TTT_EXPERIMENT")
  TTT_TRAIN_ARGS+=("out=$TTT_OUT" resume=true)
  [[ -n ${TTT_MODEL:-} ]] && TTT_TRAIN_ARGS+=("model=$TTT_MODEL")
  TTT_TRAIN_ARGS+=("$@" "${user[@]}")
}

# ttt_stop_pids TIMEOUT PID...: SIGTERM each, wait up to TIMEOUT seconds for all, then SIGKILL the rest.
# Sets TTT_STOP_STATUS to the first non-zero exit status (0 if all exited 0).
ttt_stop_pids() {
  local timeout=$1 pid s t0=$SECONDS
  shift
  TTT_STOP_STATUS=0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "$@"; do
    # bash reaps finished children at once, so kill -0 fails as soon as one has exited
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < timeout)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      ttt_log "pid $pid still running $timeout s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    s=$?
    ((TTT_STOP_STATUS == 0)) && TTT_STOP_STATUS=$s
  done
}

# Stop the services (vLLM, Ray): SIGTERM them and their direct children (a `ttt serve-vllm` runs the
# vLLM API server in its own session), bounded by TTT_SERVICE_STOP_TIMEOUT.
ttt_stop_services() {
  local pid
  ((${#TTT_SVC_PIDS[@]})) || return 0
  ttt_log "stopping ${TTT_SVC_NAMES[*]}"
  for pid in "${TTT_SVC_PIDS[@]}"; do pkill -TERM -P "$pid" 2>/dev/null; done
  ttt_stop_pids "$TTT_SERVICE_STOP_TIMEOUT" "${TTT_SVC_PIDS[@]}"
  TTT_SVC_PIDS=() TTT_SVC_NAMES=()
}

ttt_cleanup_files() {
  ((${#TTT_CLEANUP[@]})) && rm -f -- "${TTT_CLEANUP[@]}"
  return 0
}

# Requeue this job (the requeued run continues from the checkpoint: resume=true), unless TTT_REQUEUE=0,
# TTT_MAX_REQUEUES is reached, or the job was cancelled (scancel also sends SIGTERM).
ttt_requeue() {
  local state
  if [[ $TTT_REQUEUE != 1 ]]; then
    ttt_log "TTT_REQUEUE=$TTT_REQUEUE: not requeueing"
    return 0
  fi
  if [[ -n ${TTT_MAX_REQUEUES:-} ]] && ((${SLURM_RESTART_COUNT:-0} >= TTT_MAX_REQUEUES)); then
    ttt_log "already requeued ${SLURM_RESTART_COUNT:-0} times (TTT_MAX_REQUEUES=$TTT_MAX_REQUEUES): not requeueing"
    return 0
  fi
  state=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1)
  if [[ $state == JobState=CANCELLED ]]; then
    ttt_log "the job was cancelled: not requeueing"
    return 0
  fi
  ttt_run scontrol requeue "$SLURM_JOB_ID" || ttt_log "scontrol requeue $SLURM_JOB_ID failed"
}

# The trap: forward SIGTERM to the learner(s), wait for their checkpoint, stop the services, requeue.
ttt_on_signal() {
  trap '' TERM USR1 # a second signal must not interrupt the checkpoint wait
  [[ -n ${TTT_SLEEP_PID:-} ]] && kill "$TTT_SLEEP_PID" 2>/dev/null
  ttt_log "caught SIG$1: forwarding SIGTERM to ${TTT_MAIN_NAMES[*]:-(no learner yet)} and waiting up to $TTT_STOP_TIMEOUT s for the checkpoint"
  ttt_stop_pids "$TTT_STOP_TIMEOUT" "${TTT_MAIN_PIDS[@]}"
  local status=$TTT_STOP_STATUS
  ttt_log "learner exit status after SIGTERM: $status"
  ttt_stop_services
  ttt_cleanup_files
  if ((${#TTT_MAIN_PIDS[@]} > 0 && status == 0)); then
    ttt_log "the learner had finished: not requeueing"
    exit 0
  fi
  ttt_requeue
  exit 143
}

# Wait for the learner(s); then stop the services and exit with the learner's status. A learner that
# exits 143 (SIGTERM from Slurm directly: preemption, time limit) also requeues.
ttt_wait_main_and_exit() {
  ttt_dry && exit 0
  local pid status=0 s
  for pid in "${TTT_MAIN_PIDS[@]}"; do
    wait "$pid"
    s=$?
    ((status == 0)) && status=$s
  done
  ttt_log "${TTT_MAIN_NAMES[*]} finished with status $status"
  trap '' TERM USR1
  ttt_stop_services
  ttt_cleanup_files
  if ((status == 143)); then
    ttt_requeue
  fi
  exit "$status"
}

# ttt_join_ray NAME ADDRESS [SRUN PREFIX...]: make a node a 0-CPU, 0-GPU member of the Ray cluster at
# ADDRESS, so that the loop's ray.init(address=...) there finds a local raylet (Ray drivers must run on a
# cluster node); the verification tasks themselves run on the cluster's CPU nodes.
ttt_join_ray() {
  local name=$1 addr=$2
  shift 2
  ttt_start "$name" service "$@" "$RAY_BIN" start "--address=$addr" --num-cpus=0 --num-gpus=0 \
    --disable-usage-stats --block
}

# The GPU ids of this node into TTT_GPUS: NUM_GPUS (else SLURM_GPUS_ON_NODE, the CUDA_VISIBLE_DEVICES that
# Slurm set for the batch step, nvidia-smi, or 8 in a dry run) GPUs, named as in CUDA_VISIBLE_DEVICES when
# that lists at least as many (the first N), else 0..N-1.
ttt_gpu_ids() {
  local n=${NUM_GPUS:-${SLURM_GPUS_ON_NODE:-}} visible=()
  IFS=',' read -r -a visible <<<"${CUDA_VISIBLE_DEVICES:-}"
  if [[ -z $n ]]; then
    if ((${#visible[@]})); then
      n=${#visible[@]}
    elif ! ttt_dry && command -v nvidia-smi >/dev/null 2>&1; then
      n=$(nvidia-smi -L | grep -c '^GPU')
    elif ttt_dry; then
      n=8
    fi
  fi
  if ! [[ $n =~ ^[0-9]+$ ]] || ((n == 0)); then
    ttt_fail "cannot tell how many GPUs this node has: set NUM_GPUS"
  fi
  if ((${#visible[@]} >= n)); then
    TTT_GPUS=("${visible[@]:0:n}")
  else
    mapfile -t TTT_GPUS < <(seq 0 $((n - 1)))
  fi
}

# ttt_join A B C -> "A,B,C"
ttt_join() {
  local IFS=,
  printf '%s' "$*"
}

# ttt_vllm_cmd NAME BIND_HOST PORT TP: one `ttt serve-vllm` command line into TTT_VLLM_CMD; the vLLM log
# goes to the component log $TTT_LOG_DIR/NAME.log. The servers load the adapters the learner writes under
# $TTT_OUT by path: $TTT_OUT must be on a filesystem that the server nodes share with the learner.
ttt_vllm_cmd() {
  local vargs=()
  [[ -n ${TTT_MODEL:-} ]] || ttt_fail "set TTT_MODEL: the vLLM servers need the model (a hub name or a shared path)"
  TTT_VLLM_CMD=("$TTT_BIN" serve-vllm --model "$TTT_MODEL" --host "$2" --port "$3"
    --max-lora-rank "${VLLM_MAX_LORA_RANK:-32}" --gpu-memory-utilization "${VLLM_GPU_MEMORY_UTILIZATION:-0.9}")
  [[ -n ${VLLM_DTYPE:-} ]] && TTT_VLLM_CMD+=(--dtype "$VLLM_DTYPE")
  [[ -n ${VLLM_MAX_MODEL_LEN:-} ]] && TTT_VLLM_CMD+=(--max-model-len "$VLLM_MAX_MODEL_LEN")
  TTT_VLLM_CMD+=(--log "$TTT_LOG_DIR/$1.log")
  (($4 > 1)) && vargs+=(--tensor-parallel-size "$4")
  local user=()
  ttt_words user "${VLLM_EXTRA_ARGS:-}"
  vargs+=("${user[@]}")
  ((${#vargs[@]})) && TTT_VLLM_CMD+=(-- "${vargs[@]}")
  return 0
}

# ttt_cpus_per_node [HET_GROUP]: the CPUs Slurm gave each node (of a het group), from
# SLURM_JOB_CPUS_PER_NODE[_HET_GROUP_G] ("64(x4),32" -> 64); empty when unknown.
ttt_cpus_per_node() {
  local v
  if [[ -n ${1:-} ]]; then
    v=SLURM_JOB_CPUS_PER_NODE_HET_GROUP_$1
    v=${!v:-}
  else
    v=${SLURM_JOB_CPUS_PER_NODE:-}
  fi
  v=${v%%[(,]*}
  [[ $v =~ ^[0-9]+$ ]] && printf '%s' "$v"
  return 0
}

# For a job that only runs services (the verifier cluster): stay up until a signal (the trap stops them and
# requeues) or until one of them exits (then stop the rest and fail).
ttt_wait_services_and_exit() {
  ttt_dry && exit 0
  local i
  while :; do
    for i in "${!TTT_SVC_PIDS[@]}"; do
      if ! kill -0 "${TTT_SVC_PIDS[$i]}" 2>/dev/null; then
        trap '' TERM USR1
        wait "${TTT_SVC_PIDS[$i]}"
        ttt_log "${TTT_SVC_NAMES[$i]} exited (status $?; see $TTT_LOG_DIR/${TTT_SVC_NAMES[$i]}.log): stopping"
        ttt_stop_services
        ttt_cleanup_files
        exit 1
      fi
    done
    ttt_sleep 10
  done
}

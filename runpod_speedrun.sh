#!/usr/bin/env bash
# speedrun.sh on a rented GPU pod (RunPod: the persistent volume is /workspace), unattended.
#   screen -L -S speedrun bash runpod_speedrun.sh       # then Ctrl-a d to detach; screen -r to come back
#   RUN_RL=1 AUTO_BACKUP=1 AUTO_STOP=1 bash runpod_speedrun.sh
# Every artifact goes to $WORKSPACE/nanochat_artifacts (the volume survives the pod), the log to
# $WORKSPACE/speedrun.log as well as the terminal, the report to $WORKSPACE/nanochat_final_report.md.
# Run it again after a lost pod or a crash: completed stages are skipped and the interrupted one
# resumes from its last checkpoint.
# Environment: WORKSPACE (/workspace), NUM_SHARDS (240), RUN_RL (0), AUTO_BACKUP (0), AUTO_STOP (0,
# needs runpodctl and RUNPOD_POD_ID), ALLOW_CPU=1 (run without a GPU: the small CPU configuration),
# DEVICE_BATCH_SIZE (default sized to the GPU memory), and speedrun.sh's own knobs.
set -euo pipefail
cd "$(dirname "$0")"
WORKSPACE="${WORKSPACE:-/workspace}"
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$WORKSPACE/nanochat_artifacts}"
LOG="$WORKSPACE/speedrun.log"
FINAL_REPORT="$WORKSPACE/nanochat_final_report.md"
NUM_SHARDS="${NUM_SHARDS:-240}"
export NUM_SHARDS SPEEDRUN_LOG="$LOG"

die() { echo "error: $*" >&2; exit 1; }
[ -d "$WORKSPACE" ] && [ -w "$WORKSPACE" ] || die "WORKSPACE=$WORKSPACE is not a writable directory: attach the pod's volume or set WORKSPACE"
mkdir -p "$NANOCHAT_BASE_DIR"
START=$(date +%s)
echo "== runpod_speedrun start $(date -u '+%Y-%m-%d %H:%M:%S UTC') ==" | tee -a "$LOG"

# ---- the machine, before anything long
NGPU=0
GPU_MEM_MB=0
GPU_NAME=none
if command -v nvidia-smi >/dev/null 2>&1; then
  NGPU=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
  if [ "$NGPU" -gt 0 ]; then
    GPU_MEM_MB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | sort -n | head -1 | tr -d ' ')
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  fi
fi
FREE_GB=$(df -P -k "$WORKSPACE" | awk 'NR == 2 {print int($4 / 1048576)}')
{
  if [ "$NGPU" -gt 0 ]; then echo "GPUs:    $NGPU x $GPU_NAME ($((GPU_MEM_MB / 1024)) GiB each)"; else echo "GPUs:    none"; fi
  echo "CPU:     $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory"
  echo "disk:    $FREE_GB GiB free on $WORKSPACE"
} | tee -a "$LOG"

if [ "$NGPU" -eq 0 ]; then
  [ "${ALLOW_CPU:-0}" = 1 ] || die "no GPU is visible (nvidia-smi lists none): start a GPU pod, or set ALLOW_CPU=1 for the small CPU run"
  echo "plan:    CPU run (ALLOW_CPU=1): the small configuration of speedrun.sh" | tee -a "$LOG"
else
  # ~100 MB per FineWeb-Edu shard, and d20 checkpoints with optimizer state (~7 GB each, two kept per phase)
  NEED_GB=$((NUM_SHARDS / 10 + 30))
  [ "$FREE_GB" -ge "$NEED_GB" ] || die "only $FREE_GB GiB free on $WORKSPACE, the run needs about $NEED_GB GiB ($NUM_SHARDS shards + checkpoints): grow the volume or lower NUM_SHARDS"
  # device batch sized to the GPU memory, the step's arithmetic and the time and cost: nanochat/plan.py
  PLAN=$(PYTHONPATH="$PWD" python3 -m nanochat.plan --gpus="$NGPU" --gpu_name="$GPU_NAME" --gpu_mem_mb="$GPU_MEM_MB" \
         --device_batch_size="${DEVICE_BATCH_SIZE:-none}") || die "could not plan the run (python3 -m nanochat.plan failed)"
  eval "$PLAN"
  export DEVICE_BATCH_SIZE
  HOURS="$PLAN_HOURS"
  COST="$PLAN_COST"
  [ "$COST" = unknown ] && COST="unknown for $GPU_NAME"
  echo "plan:    d20 on $NGPU GPU(s), device_batch_size $DEVICE_BATCH_SIZE, ~$HOURS h, ~$COST at on-demand prices" | tee -a "$LOG"
fi
echo "RL:      ${RUN_RL:-0} (RUN_RL=1 to run it)   auto stop: ${AUTO_STOP:-0}   artifacts: $NANOCHAT_BASE_DIR" | tee -a "$LOG"

# ---- the pipeline (its stages are resumable), logged to the volume and the terminal
rc=0
bash speedrun.sh < /dev/null 2>&1 | tee -a "$LOG" || rc=$?
ELAPSED=$(($(date +%s) - START))
if [ "$rc" != 0 ]; then
  echo "error: the speedrun stopped (exit $rc) after $((ELAPSED / 60)) min; the failed stage is named above and in $LOG. Run this script again to resume." | tee -a "$LOG" >&2
  exit "$rc"
fi

REPORT="$NANOCHAT_BASE_DIR/report/report.md"
[ -f "$REPORT" ] || die "the speedrun finished but wrote no report at $REPORT"
# the report links its plots relative to report/; point them at the same files from $WORKSPACE
PLOTS_REL=$(realpath -m --relative-to="$WORKSPACE" "$NANOCHAT_BASE_DIR/report/plots")
sed "s#](plots/#]($PLOTS_REL/#g" "$REPORT" > "$FINAL_REPORT.tmp" && mv "$FINAL_REPORT.tmp" "$FINAL_REPORT"
echo "== done in $((ELAPSED / 3600))h$((ELAPSED % 3600 / 60))m; report: $FINAL_REPORT ==" | tee -a "$LOG"
if [ -f "$NANOCHAT_BASE_DIR/stages/durations.txt" ]; then
  echo "stage durations (s):" | tee -a "$LOG"
  tee -a "$LOG" < "$NANOCHAT_BASE_DIR/stages/durations.txt"
fi

if [ "${AUTO_BACKUP:-0}" = 1 ]; then
  WORKSPACE="$WORKSPACE" bash runpod_storage.sh backup --no-data 2>&1 | tee -a "$LOG"
fi
if [ "${AUTO_STOP:-0}" = 1 ]; then
  if ! command -v runpodctl >/dev/null 2>&1; then
    echo "AUTO_STOP=1 but runpodctl is not installed: stop the pod from the RunPod console" | tee -a "$LOG"
    exit 0
  fi
  [ -n "${RUNPOD_POD_ID:-}" ] || { echo "AUTO_STOP=1 but RUNPOD_POD_ID is not set: stop the pod from the console" | tee -a "$LOG"; exit 0; }
  echo "stopping pod $RUNPOD_POD_ID (AUTO_STOP=1); the volume keeps everything" | tee -a "$LOG"
  runpodctl stop pod "$RUNPOD_POD_ID"
fi

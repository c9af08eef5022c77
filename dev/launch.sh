#!/usr/bin/env bash
# Launch one phase of the pipeline (scripts/<name>.py) with checks first, in the background, with logs.
#
#   bash dev/launch.sh                               # = base_train --test: 10 steps in the background
#   bash dev/launch.sh base_train --test             # 10 steps on every visible GPU: does the setup work?
#   bash dev/launch.sh base_train --train --depth=20 # the real run (resumes from its latest checkpoint)
#   bash dev/launch.sh base_train --train --dry-run  # checks, exact command and resolved config; runs nothing
#   bash dev/launch.sh chat_sft --train --gpus 4 --foreground
#   bash dev/launch.sh --train --batch-size 8 --max-steps 500   # seed-style spellings, see below
#   bash dev/launch.sh status                        # every run: running / finished / stopped / failed
#   bash dev/launch.sh stop [RUN] [--timeout=S]      # SIGTERM: finish the step, save a checkpoint, exit
#
# The script name may be left out: base_train. The mode is --test unless --train is given.
# --test     a short run (--num_iterations=10, small evaluations; only options the script has) under
#            a scratch NANOCHAT_BASE_DIR in the run's log folder that links your tokenizer, data and
#            earlier checkpoints: your checkpoints and report are never touched; its checkpoint is
#            deleted when it ends.
# --train    the real run; adds --resume=auto (pass --resume=none to start fresh).
# --dry-run  print the checks, the command and the resolved config; run nothing.
# --gpus N   processes, one per GPU (default: every GPU CUDA_VISIBLE_DEVICES leaves visible); 0 = one
#            CPU process. N > 1 uses torchrun.
# --name RUN (default <script>_<date>_<time>), --foreground (stay attached; Ctrl-C stops like `stop`;
# by default the run goes to the background and its first 5 s of log are shown), --verbose (the
# resolved config before launching, 30 s of log), --logs-dir DIR (run folders, default
# $NANOCHAT_BASE_DIR/logs), --force (launch although a check failed). Any other --key=value or
# --key value, or all after --, goes to the script.
#
# Spellings of Hugging Face Trainer-style launchers (values after a space or '='):
#   --max-steps N        --num_iterations=N       --batch-size N   --device_batch_size=N (per GPU)
#   --max-seq-length N   --max_seq_len=N          --save-steps N   --save_every=N
#   --fp16 / --fp32      --dtype=fp16 / fp32      --no-compile     --compile=false
#   --num-gpus N         --gpus N                 --no-save-initial  --save_initial=false
#   --dataset-path P     --corpus=P (base_train, base_loss, tok_train)
#   --output-dir D       NANOCHAT_BASE_DIR=D: everything of a run lives there (tokenizer, data,
#                        checkpoints, logs), so a new D needs its own tokenizer and data
#   --learning-rate X    refused: there is no single learning rate here. Muon trains the matrices
#                        (--matrix_lr), AdamW the embedding and head (--embedding_lr, --unembedding_lr),
#                        each scaled by width, and the chat phases take a fraction (--init_lr_frac);
#                        mapping one number onto one of them would change what it means.
#
# NANOCHAT_LANG=ko: the Korean run's base dir (~/.cache/nanochat_ko unless NANOCHAT_BASE_DIR is set;
# a base dir holding the other language's run is refused) and its defaults where the script has the
# option: tok_train --corpus=ko --pattern=korean --mix_corpus=fineweb-edu (embedded with
# --corpus=embedded-ko) --mix_share=0.2, base_train / base_loss --corpus=ko, mid_train --tasks=mid-ko
# and chat_sft --tasks=sft-ko (with --offline: their -offline presets) --identity_name=나노챗,
# base_eval --tasks='CORE|KoBEST', chat_eval -a 'all|korean'. Options given win.
#
# Logs: $NANOCHAT_BASE_DIR/logs/<run>/: console.log (everything), rank<N>/stdout.log + stderr.log per
# rank (torchrun) or rank0.log (one process), command.txt, config.txt, pid, child.pid, exit_code.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_PWD=$PWD
abs_path() {  # a path as typed by the caller (~, relative to where they ran this) -> absolute
  local p=${1/#\~/$HOME}
  [ "$p" = / ] || p=${p%/}
  case "$p" in /*) echo "$p" ;; *) echo "$CALLER_PWD/$p" ;; esac
}
# shellcheck source=dev/lang.sh
source "$REPO/dev/lang.sh"
lang_check
BASE=$(abs_path "${NANOCHAT_BASE_DIR:-$(lang_base_dir "$HOME/.cache/nanochat")}")
cd "$REPO"  # scripts run as `python -m scripts.<name>` from the repository root
LOGS="$BASE/logs"
LOGS_SET=0
if [ -n "${NANOCHAT_PYTHON:-}" ]; then PY=$NANOCHAT_PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
else PY=$(command -v python3 || echo python3)
fi
# which folder each training script writes its checkpoints to (a --test run gets a fresh one); the
# phases and their folders are nanochat/phases.py's, read once here
declare -A OUTPUT_DIR=([tok_train]=tokenizer)
while read -r _phase dirname producer; do OUTPUT_DIR[$producer]=$dirname; done < <(PYTHONPATH="$REPO" "$PY" -m nanochat.phases)

die() { echo "error: $*" >&2; exit 1; }
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  echo "scripts: $(available_scripts)"
}
available_scripts() {
  local f out=""
  for f in scripts/*.py; do
    f=${f##*/}; f=${f%.py}
    [ "$f" = __init__ ] || out+="$f "
  done
  echo "${out% }"
}
meta_get() { grep -m1 "^$2=" "$1/meta" 2>/dev/null | cut -d= -f2- || true; }
children_of() { ps -A -o pid=,ppid= 2>/dev/null | awk -v p="$1" '$2 == p {print $1}'; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# shellcheck source=dev/gpus.sh
source "$REPO/dev/gpus.sh"

# ------------------------------------------------------------------------------------------------
# Runs: a folder per run under $LOGS; the state comes from child.pid (alive?) and exit_code

run_state() {  # dir -> running | finished | stopped | failed (exit N) | ended without exit code
  local dir=$1 child rc script
  child=$(cat "$dir/child.pid" 2>/dev/null || true)
  script=$(meta_get "$dir" script)
  if alive "$child" && ps -o args= -p "$child" 2>/dev/null | grep -Eq "scripts\.$script|torch\.distributed\.run"; then
    echo "running (pid $child)"; return
  fi
  rc=$(cat "$dir/exit_code" 2>/dev/null || true)
  if [ -z "$rc" ]; then
    if [ -f "$dir/child.pid" ]; then echo "ended without an exit code (killed, or the pod was lost)"; else echo "not started"; fi
  elif [ -f "$dir/stop_requested" ] && grep -q 'stopped by signal' "$dir/console.log" 2>/dev/null; then
    echo "stopped (checkpoint saved)"  # the training loops exit 143 after saving, torchrun then 1
  elif [ "$rc" = 0 ]; then echo "finished"
  else echo "failed (exit $rc)"
  fi
}
running_runs() {
  local d
  for d in "$LOGS"/*/; do
    [ -f "$d/meta" ] || continue
    case "$(run_state "${d%/}")" in running*) basename "$d" ;; esac
  done
  return 0
}

cmd_status() {
  [ $# -eq 0 ] || die "status takes no arguments"
  local d n=0 last g
  for d in "$LOGS"/*/; do
    d=${d%/}
    [ -f "$d/meta" ] || continue
    n=$((n + 1))
    g=$(meta_get "$d" gpus)
    printf '%-36s %-32s %s  %s --%s, %s\n' "${d##*/}" "$(run_state "$d")" \
      "$(date -d "@$(meta_get "$d" started)" '+%Y-%m-%d %H:%M' 2>/dev/null || echo '?')" \
      "$(meta_get "$d" script)" "$(meta_get "$d" mode)" "$([ "$g" = 0 ] && echo CPU || echo "$g GPU(s)")"
    last=$(grep -v '^[[:space:]]*$' "$d/console.log" 2>/dev/null | tail -n1 | cut -c1-150 || true)
    [ -z "$last" ] || echo "    last: $last"
    echo "    logs: $d/console.log"
  done
  [ "$n" -gt 0 ] || echo "no runs in $LOGS (start one: bash dev/launch.sh base_train --test)"
}

send_stop() {  # dir: SIGTERM to the training processes (the ranks under torchrun)
  local dir=$1 child targets=""
  child=$(cat "$dir/child.pid")
  if [ "$(meta_get "$dir" launcher)" = torchrun ]; then
    # the ranks only: torchrun itself, on SIGTERM, SIGKILLs its workers 30 s later, which can cut
    # a checkpoint save on a slow volume short; once every rank has exited 0 it exits 0 by itself
    targets=$(children_of "$child" | tr '\n' ' ')
  fi
  [ -n "${targets// /}" ] || targets=$child
  touch "$dir/stop_requested"
  # shellcheck disable=SC2086  # a list of pids
  kill -TERM $targets 2>/dev/null || true
  echo "$targets"
}

cmd_stop() {
  local run="" timeout=600
  while [ $# -gt 0 ]; do
    case "$1" in
      --timeout=*) timeout=${1#*=} ;;
      --timeout) timeout=${2:-}; shift ;;
      -*) die "unknown stop option $1 (--timeout=SECONDS)" ;;
      *) [ -z "$run" ] || die "stop takes one RUN"; run=$1 ;;
    esac
    shift
  done
  [[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds, got '$timeout'"
  if [ -z "$run" ]; then
    local running
    running=$(running_runs)
    [ -n "$running" ] || die "no run is running (bash dev/launch.sh status lists them)"
    [ "$(wc -l <<<"$running")" -eq 1 ] || die "several runs are running ($(tr '\n' ' ' <<<"$running")): name one: bash dev/launch.sh stop RUN"
    run=$running
  fi
  local dir="$LOGS/$run"
  [ -f "$dir/meta" ] || die "no run $run in $LOGS (bash dev/launch.sh status lists them)"
  case "$(run_state "$dir")" in running*) ;; *) die "run $run is not running: $(run_state "$dir")" ;; esac
  local targets child t0 waited=0
  child=$(cat "$dir/child.pid")
  targets=$(send_stop "$dir")
  echo "sent SIGTERM to $run (pid ${targets% }): it finishes its current step, saves a checkpoint and exits; waiting up to ${timeout}s"
  t0=$(date +%s)
  while alive "$child"; do
    waited=$(( $(date +%s) - t0 ))
    if [ "$waited" -ge "$timeout" ]; then
      echo "run $run is still running after ${timeout}s (it may still be saving): wait, and check with bash dev/launch.sh status; or end it now without saving: kill -KILL -- -$child" >&2
      exit 1
    fi
    if [ "$waited" -gt 0 ] && [ $((waited % 30)) -eq 0 ]; then echo "still running after ${waited}s (a checkpoint on a network volume can take minutes)"; fi
    sleep 1
  done
  local i rc=""
  for i in 1 2 3 4 5 6 7 8 9 10; do
    rc=$(cat "$dir/exit_code" 2>/dev/null || true)
    [ -z "$rc" ] || break
    [ "$i" = 10 ] || sleep 0.5
  done
  local saved
  saved=$(grep -E 'stopped by signal|saved checkpoint' "$dir/console.log" 2>/dev/null | tail -n1 || true)
  if [ "$rc" = 0 ] || grep -q 'stopped by signal' "$dir/console.log" 2>/dev/null; then
    echo "run $run stopped${saved:+: $saved}"
  elif [ -z "$rc" ]; then
    echo "run $run ended (its exit code was not recorded)${saved:+; last: $saved}"
  else
    die "run $run exited with code $rc: see $dir/console.log"
  fi
}

# ------------------------------------------------------------------------------------------------
# The supervisor: starts the command in its own session, records its pid and exit code

log() {  # dir message...
  local dir=$1
  shift
  echo "[launch $(date '+%H:%M:%S')] $*" >> "$dir/console.log"
}

link_rank_logs() {  # torchrun writes ranks/<id>/attempt_N/<rank>/{stdout,stderr}.log: link rank<rank>
  local dir=$1 r
  for r in "$dir"/ranks/*/attempt_*/*/; do
    [ -d "$r" ] || continue
    r=${r%/}
    ln -sfn "${r#"$dir"/}" "$dir/rank${r##*/}"
  done
}

supervise() {  # dir foreground(0|1)
  local dir=$1 fg=$2 cmd=() child rc=0 tailpid="" t0
  mapfile -d '' cmd < "$dir/cmd"
  echo "$BASHPID" > "$dir/pid"
  t0=$(date +%s)
  log "$dir" "starting: $(cat "$dir/command.txt")"
  [ "$(meta_get "$dir" launcher)" = torchrun ] || ln -sfn console.log "$dir/rank0.log"
  # its own session: a closed terminal or Ctrl-C never reaches it directly; output goes to a file,
  # never to a pipe or a terminal that could vanish under it
  setsid "${cmd[@]}" >> "$dir/console.log" 2>&1 < /dev/null &
  child=$!
  echo "$child" > "$dir/child.pid"
  if [ "$fg" = 1 ]; then
    tail -n +1 -f "$dir/console.log" &
    tailpid=$!
  fi
  STOPS=0
  trap 'STOPS=$((STOPS + 1)); if [ "$STOPS" = 1 ]; then log "$dir" "stop requested: the run finishes its step, saves a checkpoint and exits (Ctrl-C again: kill it now)"; send_stop "$dir" >/dev/null; else log "$dir" "killing it"; kill -KILL -- "-$child" 2>/dev/null || true; fi' INT TERM
  trap '' HUP
  while alive "$child"; do
    [ "$(meta_get "$dir" launcher)" != torchrun ] || link_rank_logs "$dir"
    sleep 1 || true  # Ctrl-C interrupts the sleep too
  done
  wait "$child" || rc=$?
  echo "$rc" > "$dir/exit_code"
  if [ "$(meta_get "$dir" mode)" = test ] && [ -d "$dir/base" ]; then
    local e
    for e in "$dir"/base/*; do  # the test's own checkpoints: real folders, unlike the links to yours
      if [ -d "$e" ] && [ ! -L "$e" ] && [ "${e##*/}" != report ]; then rm -rf -- "$e"; fi
    done
  fi
  log "$dir" "exit code $rc after $(( $(date +%s) - t0 ))s$([ "$rc" = 0 ] && [ "$(meta_get "$dir" mode)" = test ] && echo ": the setup works")"
  if [ -n "$tailpid" ]; then
    sleep 0.5
    kill "$tailpid" 2>/dev/null || true
    wait "$tailpid" 2>/dev/null || true
    echo "run ${dir##*/}: $(run_state "$dir"); log: $dir/console.log"
  fi
  return "$rc"
}

# ------------------------------------------------------------------------------------------------
# Launch

# Python side of the checks: resolves the script's options (which test defaults apply), validates
# them, and checks torch/CUDA/GPUs, tokenizer, data, input checkpoint and free disk. One line each.
CHECKS_PY=$(cat <<'PYEOF'
import importlib, os, shutil, sys
script, gpus, base, min_free, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
rest = sys.argv[6:]
sep = rest.index("--")
defaults, user = rest[:sep], rest[sep + 1:]
os.environ["NANOCHAT_BASE_DIR"] = base
fails = 0
def line(status, what, msg):
    global fails
    fails += status == "FAIL"
    print(f"  {status:<4} {what}: {msg}", flush=True)
torch = None
try:
    import torch
    line("OK", "torch", torch.__version__)
except Exception as e:
    line("FAIL", "torch", f"does not import ({type(e).__name__}: {e}): run bash dev/setup_env.sh")
if torch is not None and gpus > 0:
    if not torch.cuda.is_available():
        line("FAIL", "CUDA", f"torch {torch.__version__} sees no CUDA GPU: check nvidia-smi, or run on CPU with --gpus 0")
    elif torch.cuda.device_count() < gpus:
        n = torch.cuda.device_count()
        line("FAIL", "GPUs", f"asked for {gpus}, {n} visible: pass --gpus {n}")
    else:
        line("OK", "GPUs", f"{gpus} of {torch.cuda.device_count()} ({torch.cuda.get_device_name(0)})")
elif gpus == 0:
    line("OK", "device", "CPU, one process")
fields, opts = None, None
try:
    import dataclasses
    from nanochat.config import ConfigError, format_config, parse
    module = importlib.import_module(f"scripts.{script}")
    # the options class the script parses: the most derived *Options dataclass it has (some import theirs)
    found = [v for k, v in vars(module).items() if k.endswith("Options") and dataclasses.is_dataclass(v)]
    Options = next(c for c in found if not any(o is not c and issubclass(o, c) for o in found))
    fields = {f.name for f in dataclasses.fields(Options)}
except Exception as e:
    line("WARN", "options", f"scripts.{script} has no options dataclass to check ({type(e).__name__}: {e})")
user_keys = {a[2:].split("=", 1)[0].replace("-", "_") for a in user if a.startswith("--")}
applied = [d for d in defaults if fields is None or (d[2:].split("=", 1)[0] in fields and d[2:].split("=", 1)[0] not in user_keys)]
args = applied + user
with open(os.path.join(out, "args"), "wb") as f:
    f.write(b"".join(a.encode() + b"\0" for a in args))
if fields is not None:
    try:
        opts = parse(Options, args)
        with open(os.path.join(out, "config"), "w") as f:
            f.write(format_config(opts) + "\n")
        line("OK", "options", " ".join(args) or "defaults")
    except ConfigError as e:
        line("FAIL", "options", str(e))
if script != "tok_train":
    tok = os.path.join(base, "tokenizer", "tokenizer.json")
    if os.path.isfile(tok):
        line("OK", "tokenizer", tok)
    else:
        line("FAIL", "tokenizer", f"none at {tok}: train it with python -m scripts.tok_train (or bash dev/launch.sh tok_train --train)")
run_name = getattr(opts, "run", None) if opts is not None else None
if run_name not in (None, "", "dummy", "none"):
    import importlib.util
    netrc = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    has_key = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun")
    if not has_key and os.path.isfile(netrc):
        with open(netrc, errors="replace") as f:
            has_key = "api.wandb.ai" in f.read()
    if importlib.util.find_spec("wandb") is None:
        line("FAIL", "wandb", f"--run={run_name} logs to wandb, which is not installed: uv pip install -e '.[wandb]' (or --run=dummy)")
    elif not has_key:
        line("FAIL", "wandb", f"--run={run_name} but wandb has no API key: wandb login (or export WANDB_API_KEY=..., or WANDB_MODE=offline)")
    else:
        line("OK", "wandb", f"logs to run {run_name}")
source = getattr(opts, "source", None) if opts is not None else None
corpus = getattr(opts, "corpus", None) if opts is not None else None
try:
    from nanochat.checkpoint import PHASES, checkpoint_dir, latest_step
    if script in ("base_train", "base_loss") and opts is not None:
        from nanochat.dataset import list_shards
        try:
            train, val = list_shards("train", corpus), list_shards("val", corpus)
            line("OK", "data", f"{len(train)} training shards + validation in {train[0].parent}")
        except Exception as e:
            line("FAIL", "data", str(e).splitlines()[0] if str(e) else type(e).__name__)
    need = "base" if script == "base_loss" else (source if isinstance(source, str) and source in PHASES else None)
    if need and opts is not None:
        tag = getattr(opts, "model_tag", None)
        step = latest_step(need, tag)
        if step is None:
            producer = PHASES[need].producer.split(".")[-1]
            suffix = f" {tag}" if tag else ""
            line("FAIL", "checkpoint", f"no {need} checkpoint{suffix} in {base}: train it first (bash dev/launch.sh {producer} --train)")
        else:
            line("OK", "checkpoint", f"starts from {need} {checkpoint_dir(need, tag).name} step {step}")
    if script == "base_train" and opts is not None and getattr(opts, "resume", "") == "auto":
        tag = opts.model_tag or f"d{opts.depth}"
        step = latest_step("base", tag)
        line("OK", "resume", f"continues {tag} from step {step}" if step is not None else f"no {tag} checkpoint yet: starts fresh")
except ImportError as e:
    line("WARN", "checkpoint", f"not checked ({e})")
probe = base
while not os.path.exists(probe):
    probe = os.path.dirname(probe)
free = shutil.disk_usage(probe).free / 2**30
if free < min_free:
    line("FAIL", "disk", f"{free:.1f} GiB free in {probe}, want {min_free:g}: free space (bash runpod_storage.sh cleanup)")
else:
    line("OK", "disk", f"{free:.0f} GiB free in {probe}")
sys.exit(1 if fails else 0)
PYEOF
)

make_test_base() {  # dir script: a scratch base dir linking everything of yours but the test's output
  local dir=$1 script=$2 e name
  mkdir -p "$dir/base"
  for e in "$BASE"/* "$BASE"/.[!.]*; do
    [ -e "$e" ] || continue
    name=${e##*/}
    case "$name" in logs|report|"${OUTPUT_DIR[$script]:-}") continue ;; esac
    ln -s "$e" "$dir/base/$name"
  done
}

cmd_launch() {
  local script=$1
  shift
  [[ $script =~ ^[A-Za-z0-9_]+$ ]] && [ -f "scripts/$script.py" ] || {
    echo "error: no script scripts/$script.py; scripts: $(available_scripts)" >&2; exit 2; }
  local mode="" dry=0 gpus="" name="" fg=0 force=0 verbose=0 pass=() mapped=() key val
  while [ $# -gt 0 ]; do
    key=${1%%=*}
    val=""
    case "$key" in  # the options that take a value: after '=' or as the next argument
      --gpus|--name|--max-steps|--batch-size|--learning-rate|--max-seq-length|--save-steps|--num-gpus|\
      --dataset-path|--output-dir)
        if [[ $1 == *=* ]]; then val=${1#*=}
        else
          [ $# -ge 2 ] || { echo "error: $key needs a value: $key VALUE" >&2; exit 2; }
          val=$2
          shift
        fi ;;
    esac
    case "$key" in
      --test) [ "$mode" != train ] || die "--test and --train exclude each other"; mode="test" ;;
      --train) [ "$mode" != test ] || die "--test and --train exclude each other"; mode=train ;;
      --dry-run) dry=1 ;;
      --gpus|--num-gpus) gpus=$val ;;
      --name) name=$val ;;
      --foreground) fg=1 ;;
      --force) force=1 ;;
      --verbose) verbose=1 ;;
      --max-steps) pass+=("--num_iterations=$val") ;;
      --batch-size) pass+=("--device_batch_size=$val") ;;
      --max-seq-length) pass+=("--max_seq_len=$val") ;;
      --save-steps) pass+=("--save_every=$val") ;;
      --fp16) pass+=(--dtype=fp16) ;;
      --fp32) pass+=(--dtype=fp32) ;;
      --no-compile) pass+=(--compile=false) ;;
      --no-save-initial) pass+=(--save_initial=false) ;;
      --dataset-path) pass+=("--corpus=$(abs_path "$val")") ;;
      --output-dir) BASE=$(abs_path "$val"); [ "$LOGS_SET" = 1 ] || LOGS="$BASE/logs" ;;
      --learning-rate)
        echo "error: --learning-rate: there is no single learning rate here: set --matrix_lr (Muon, block matrices), --embedding_lr, --unembedding_lr (AdamW), or --init_lr_frac for the chat phases (see bash dev/launch.sh --help)" >&2
        exit 2 ;;
      --) shift; pass+=("$@"); break ;;
      --?*)
        if [[ $1 != *=* ]] && [ $# -ge 2 ] && [[ $2 != -* ]]; then pass+=("$1=$2"); shift  # --key value
        else pass+=("$1")
        fi ;;
      *) echo "error: unexpected argument '$1': options for the script are written --key=value" >&2; exit 2 ;;
    esac
    case "$key" in
      --max-steps|--batch-size|--max-seq-length|--save-steps|--fp16|--fp32|--no-compile|--no-save-initial|--dataset-path)
        mapped+=("$key${val:+ $val} -> ${pass[${#pass[@]}-1]}") ;;
      --num-gpus) mapped+=("$key $val -> --gpus $val") ;;
      --output-dir) mapped+=("$key $val -> NANOCHAT_BASE_DIR=$BASE") ;;
    esac
    shift
  done
  [ -n "$mode" ] || mode="test"  # as the launchers people come from: a test unless --train is said
  lang_refuse_other "$BASE"
  [ -n "$gpus" ] || gpus=$(visible_gpu_count)
  [[ $gpus =~ ^[0-9]+$ ]] || die "--gpus must be a number (0 = CPU), got '$gpus'"
  gpus=$((10#$gpus))

  local stamp run dir
  stamp=$(date +%Y%m%d_%H%M%S)
  if [ -n "$name" ]; then
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--name must be letters, digits, '.', '_' or '-', got '$name'"
    run=$name
    [ "$dry" = 1 ] || [ ! -e "$LOGS/$run" ] || die "a run named $run exists already ($LOGS/$run): pick another --name"
  else
    run="${script}_$stamp"
    local i=2
    while [ -e "$LOGS/$run" ]; do run="${script}_${stamp}_$i"; i=$((i + 1)); done
  fi
  dir="$LOGS/$run"

  local defaults=()
  [ "$gpus" -gt 0 ] || defaults+=(--device_type=cpu)
  mapfile -t -O "${#defaults[@]}" defaults < <(lang_options "$script" "${pass[@]}")
  if [ "$mode" = test ]; then
    defaults+=(--num_iterations=10 --eval_every=5 --eval_tokens=65536 --eval_batches=2 --sample_every=10
               --max_problems=16)
  else
    defaults+=(--resume=auto)
  fi

  local min_free=1
  [ "$gpus" -gt 0 ] && [ "$mode" = train ] && min_free=20
  min_free=${NANOCHAT_MIN_FREE_GB:-$min_free}
  local fails=0 status work
  work=$(mktemp -d "${TMPDIR:-/tmp}/nanochat_launch.XXXXXX")
  WORK=$work
  trap 'rm -rf -- "$WORK"' EXIT
  echo "checks:"
  if ! command -v "$PY" >/dev/null 2>&1; then
    echo "  FAIL python: $PY not found: run bash dev/setup_env.sh (it creates .venv)"; fails=1
    printf '%s\0' "${pass[@]}" > "$work/args"
  else
    status=0
    "$PY" -c "$CHECKS_PY" "$script" "$gpus" "$BASE" "$min_free" "$work" "${defaults[@]}" -- "${pass[@]}" || status=$?
    if [ "$status" -gt 1 ] || [ ! -f "$work/args" ]; then
      echo "  FAIL checks: the check script itself failed (exit $status, see above)"; fails=1
      printf '%s\0' "${defaults[@]}" "${pass[@]}" > "$work/args"
    elif [ "$status" = 1 ]; then fails=1
    fi
  fi
  local r
  for r in $(running_runs); do
    if [ "$gpus" -gt 0 ]; then
      echo "  FAIL runs: $r is running and holds the GPUs: stop it (bash dev/launch.sh stop $r) or pass --force"; fails=1
    else
      echo "  WARN runs: $r is running too"
    fi
  done

  local args=() env_base=$BASE cmd=() launcher=python
  mapfile -d '' args < "$work/args"
  [ "$mode" = test ] && env_base="$dir/base"
  cmd=(env "NANOCHAT_BASE_DIR=$env_base")
  [ "$gpus" -gt 0 ] || cmd+=("CUDA_VISIBLE_DEVICES=")
  if [ "$gpus" -gt 1 ]; then
    launcher=torchrun
    cmd+=("$PY" -m torch.distributed.run --standalone "--nproc_per_node=$gpus" --log-dir "$dir/ranks" --redirects 3 --tee 3)
  else
    cmd+=("$PY")
  fi
  cmd+=(-m "scripts.$script" "${args[@]}")
  local shown
  shown=$(printf '%q ' "${cmd[@]}")
  shown=${shown% }

  echo "run:     $run ($script --$mode, $([ "$gpus" = 0 ] && echo "CPU" || echo "$gpus GPU(s)"))"
  [ "$NANOCHAT_LANG" = en ] || echo "lang:    $NANOCHAT_LANG (base dir $BASE; the Korean defaults where $script has the option)"
  local m
  for m in "${mapped[@]}"; do echo "option:  $m"; done
  echo "command: (from $REPO)"
  echo "  $shown"
  [ "$mode" != test ] || echo "scratch base dir: $dir/base (links your tokenizer, data and checkpoints; yours stay untouched)"
  echo "logs:    $dir/"
  if [ "$dry" = 1 ] || [ "$verbose" = 1 ]; then
    if [ -f "$work/config" ]; then echo "config:"; sed 's/^/  /' "$work/config"; fi
  fi
  if [ "$dry" = 1 ]; then
    if [ "$fails" = 1 ]; then echo "dry run: nothing started; some checks FAILED: fix them before launching"; else echo "dry run: nothing started; all checks passed"; fi
    return 0
  fi
  if [ "$fails" = 1 ]; then
    [ "$force" = 1 ] || die "not launched: fix the FAIL lines above (or pass --force to launch anyway)"
    echo "launching anyway (--force)"
  fi

  mkdir -p "$dir"
  [ "$mode" != test ] || make_test_base "$dir" "$script"
  printf '%s\0' "${cmd[@]}" > "$dir/cmd"
  echo "$shown" > "$dir/command.txt"
  [ ! -f "$work/config" ] || cp "$work/config" "$dir/config.txt"
  {
    echo "script=$script"; echo "mode=$mode"; echo "gpus=$gpus"; echo "launcher=$launcher"
    echo "started=$(date +%s)"; echo "base=$BASE"; echo "repo=$REPO"
  } > "$dir/meta"
  : > "$dir/console.log"
  local follow="tail -f $dir/console.log"
  if [ "$fg" = 1 ]; then
    echo "running in the foreground (Ctrl-C: stop after saving a checkpoint); log: $dir/console.log"
    trap - EXIT
    rm -rf -- "$work"
    supervise "$dir" 1
    return
  fi
  setsid bash "$REPO/dev/launch.sh" __run "$dir" < /dev/null >> "$dir/console.log" 2>&1 &
  local i
  for i in $(seq 50); do [ -f "$dir/child.pid" ] && break; sleep 0.1; done
  echo "started $run in the background (pid $(cat "$dir/child.pid" 2>/dev/null || echo '?'))"
  echo "  follow:  $follow"
  if [ "$launcher" = torchrun ]; then
    echo "  ranks:   $dir/rank<N>/stdout.log and stderr.log (one per rank)"
  else
    echo "  rank 0:  $dir/rank0.log (= console.log)"
  fi
  echo "  status:  bash dev/launch.sh status"
  echo "  stop:    bash dev/launch.sh stop $run   (saves a checkpoint first)"
  # the first seconds of the log, as a launcher shows them: a start that fails at once is seen at once
  local show=5
  [ "$verbose" = 0 ] || show=30
  echo "log, first ${show}s:"
  echo "----------------------------------------"
  timeout "$show" tail -n +1 -f --pid="$(cat "$dir/child.pid" 2>/dev/null || echo $$)" "$dir/console.log" || true
  echo "----------------------------------------"
  if alive "$(cat "$dir/child.pid" 2>/dev/null || true)"; then echo "still running in the background: $follow"
  else echo "run $run: $(run_state "$dir")"
  fi
}

main() {
  local args=() a
  while [ $# -gt 0 ]; do  # --logs-dir DIR applies to every command
    case "$1" in
      --logs-dir=*) LOGS=$(abs_path "${1#*=}"); LOGS_SET=1 ;;
      --logs-dir) [ $# -ge 2 ] || { echo "error: --logs-dir needs a value: --logs-dir DIR" >&2; exit 2; }
                  LOGS=$(abs_path "$2"); LOGS_SET=1; shift ;;
      --) args+=("$@"); break ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  set -- "${args[@]}"
  for a in "$@"; do case "$a" in -h|--help) usage; return 0 ;; --) break ;; esac; done
  local what=${1:-}
  [ $# -gt 0 ] && shift
  case "$what" in
    status) cmd_status "$@" ;;
    stop) cmd_stop "$@" ;;
    __run) supervise "$1" 0 ;;
    help) usage ;;
    "") cmd_launch base_train --test ;;  # as seed launchers do: a short test run in the background
    -*) cmd_launch base_train "$what" "$@" ;;  # options alone: base_train
    *) cmd_launch "$what" "$@" ;;
  esac
}

main "$@"

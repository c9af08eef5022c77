#!/usr/bin/env bash
# Keep a RunPod run's artifacts safe: see what is on the volume, back it up, restore it, download it.
#
#   bash runpod_storage.sh status                      # disk, checkpoints per phase, tokenizer, report, backups
#   bash runpod_storage.sh backup [NAME] [--no-data]   # verified .tar.gz (+ .sha256) in $WORKSPACE/backups/
#   bash runpod_storage.sh restore NAME|PATH|latest [-y]   # verify, save what is there, then replace it
#   bash runpod_storage.sh download                    # scp/rsync commands to paste on your own computer
#   bash runpod_storage.sh upload s3://B/P|gs://B/P [NAME] # copy a backup to S3 / GCS (aws / gsutil)
#   bash runpod_storage.sh cleanup [--keep N] [--keep-backups N] [--keep-logs N] [-y]   # list, then -y deletes
#
# WORKSPACE (default /workspace, the RunPod network volume: it survives the pod) holds
#   nanochat_artifacts/        everything the pipeline writes ($NANOCHAT_BASE_DIR, if set, instead;
#                              nanochat_artifacts_ko/ for NANOCHAT_LANG=ko, as runpod_speedrun.sh)
#   nanochat_final_report.md   the final report
#   backups/NAME.tar.gz        archives: artifacts/ (the base dir), the report, BACKUP_INFO
#   backups/NAME.tar.gz.sha256 its checksum, in `sha256sum -c` format
# --no-data leaves out the re-downloadable data: base_data/, base_data_*/ (e.g. base_data_ko) and
# chat_data/. Never archived: checkpoint temp dirs (.step_*: unfinished saves) and *.part downloads.
# restore checks every member before it changes anything: only files, folders and symlinks that stay
# inside artifacts/ (no devices, FIFOs, hard links, setuid/setgid/sticky bits, '..' or absolute names),
# the unpacked size must fit the free space (plus 5% and 64 MiB) and, above 1 GiB, be at most 200x
# the archive; it never writes through a symlink at the artifacts path. A refusal changes nothing.
set -euo pipefail

WORKSPACE="${WORKSPACE:-/workspace}"
WORKSPACE="${WORKSPACE%/}"
# shellcheck source=dev/lang.sh
source "$(dirname "${BASH_SOURCE[0]}")/dev/lang.sh"
lang_check
ART="${NANOCHAT_BASE_DIR:-$(lang_base_dir "$WORKSPACE/nanochat_artifacts")}"  # NANOCHAT_LANG=ko: nanochat_artifacts_ko
ART="${ART/#\~/$HOME}"
ART="${ART%/}"
case "$ART" in /*) ;; *) ART="$PWD/$ART" ;; esac
case "$WORKSPACE" in /*) ;; *) WORKSPACE="$PWD/$WORKSPACE" ;; esac
BACKUPS="$WORKSPACE/backups"
REPORT="$WORKSPACE/nanochat_final_report.md"
# the checkpoint folders of the training phases: nanochat/phases.py's list (standard library only)
PHASE_DIRS=()
while read -r _phase dirname _producer; do PHASE_DIRS+=("$dirname"); done \
  < <(cd "$(dirname "${BASH_SOURCE[0]}")" && python3 -m nanochat.phases)
[ "${#PHASE_DIRS[@]}" -gt 0 ] || { echo "error: could not read the phases (python3 -m nanochat.phases)" >&2; exit 1; }
PROG="bash runpod_storage.sh"
STALE_MIN=60  # temp files untouched this many minutes belong to no running writer
# restore refuses an archive that unpacks to more than RESTORE_MAX_RATIO times its own size once it
# unpacks to over RESTORE_RATIO_FLOOR bytes: checkpoints and parquet shards barely compress, while
# gzip turns 1 GiB of zeros into 1 MB (deflate's ceiling is about 1032:1, RFC 1951 length codes)
RESTORE_MAX_RATIO=200
RESTORE_RATIO_FLOOR=$((1 << 30))
RESTORE_MARGIN=$((64 << 20))  # bytes left free after a restore, on top of 5% of what it unpacks

usage() {
  cat <<EOF
usage: $PROG COMMAND
  status                         disk use, checkpoints (latest step per phase/tag), tokenizer, report, backups
  backup [NAME] [--no-data]      archive artifacts + report to \$WORKSPACE/backups/NAME.tar.gz (verified, .sha256)
                                 --no-data leaves out base_data/, base_data_*/ and chat_data/ (re-downloadable)
  restore NAME|PATH|latest [-y]  verify an archive, back up what it replaces, then restore it (-y: no prompt;
                                 latest = the newest backup that is not a restore's pre_restore_* safety copy)
  download                       print scp/rsync commands for the latest backup and the artifacts
  upload URL [NAME]              copy the latest (or NAME) backup to s3://bucket/prefix or gs://bucket/prefix
  cleanup [--keep N] [--keep-backups N] [--keep-logs N] [-y]
                                 list old checkpoints (keep N per phase/tag, default 1), old backups (default
                                 keep 2), temp dirs, stale *.part downloads, old run logs (default keep 10);
                                 deletes them only with -y
WORKSPACE=$WORKSPACE  artifacts=$ART
EOF
}

die() { echo "error: $*" >&2; exit 1; }
warn() { echo "warning: $*" >&2; }

human() {  # bytes -> 1.2G
  if command -v numfmt >/dev/null 2>&1; then numfmt --to=iec --suffix=B "$1"; else echo "$1 bytes"; fi
}
size_of() {  # bytes used by files/dirs (0 when none exist)
  local total=0 kb p
  for p in "$@"; do
    [ -e "$p" ] || [ -L "$p" ] || continue
    kb=$(du -sk "$p" 2>/dev/null | cut -f1) || kb=0
    total=$((total + ${kb:-0} * 1024))
  done
  echo "$total"
}
free_bytes() { echo $(( $(df -Pk "$1" | awk 'NR==2 {print $4}') * 1024 )); }
existing_dir() {  # PATH -> PATH or its nearest ancestor that exists (what df can measure)
  local d=$1
  while [ ! -d "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
  echo "$d"
}
mtime() { stat -c %Y "$1" 2>/dev/null || stat -f %m "$1"; }
timestamp() { date +%Y%m%d_%H%M%S; }
unused_name() {  # PREFIX -> PREFIX_<timestamp>, with a counter if that backup exists already
  local name i=2
  name="$1_$(timestamp)"
  while [ -e "$BACKUPS/$name.tar.gz" ]; do name="$1_$(timestamp)_$i"; i=$((i + 1)); done
  echo "$name"
}

# ------------------------------------------------------------------------------------------------
# Checkpoints, in the layout of nanochat/checkpoint.py: <phase dir>/<tag>/step_NNNNNN/ with meta.json

complete_steps() {  # tag dir -> its complete steps, ascending, one per line
  local d n
  for d in "$1"/step_*; do
    [ -d "$d" ] && [ -f "$d/meta.json" ] || continue
    n=${d##*/step_}
    if [[ $n =~ ^[0-9]+$ ]]; then echo "$((10#$n))"; fi
  done | sort -n
}
tag_dirs() {  # every <phase dir>/<tag> under the artifacts (dot dirs are temp, never tags)
  local phase t
  for phase in "${PHASE_DIRS[@]}"; do
    for t in "$ART/$phase"/*; do
      if [ -d "$t" ]; then echo "$t"; fi
    done
  done
}
step_dir() { printf '%s/step_%06d' "$1" "$2"; }
recent() { [ -n "$(find "$1" -mmin "-$STALE_MIN" -print -quit 2>/dev/null)" ]; }

# Runs started by dev/launch.sh write $ART/logs/<run>/child.pid; a live one must not lose its files.
running_runs() {
  local f pid
  for f in "$ART"/logs/*/child.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    [[ $pid =~ ^[0-9]+$ ]] || continue
    kill -0 "$pid" 2>/dev/null || continue
    if ps -o args= -p "$pid" 2>/dev/null | grep -q 'scripts\.'; then basename "$(dirname "$f")"; fi
  done
  return 0
}

# ------------------------------------------------------------------------------------------------
# Temp paths removed on any exit; a restore half-way is rolled back

CLEANUP=()
RESTORE_OLD=""
on_exit() {
  local rc=$? p
  if [ -n "$RESTORE_OLD" ] && [ -e "$RESTORE_OLD" ] && [ ! -e "$ART" ]; then
    mv "$RESTORE_OLD" "$ART" && echo "restore interrupted: the previous artifacts are back in $ART" >&2
  fi
  for p in "${CLEANUP[@]}"; do
    [ -n "$p" ] && rm -rf -- "$p"
  done
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

need_workspace() {
  [ -d "$WORKSPACE" ] || die "$WORKSPACE does not exist: on RunPod attach a network volume at /workspace, elsewhere set WORKSPACE=/some/dir"
}

latest_backup() {  # newest *.tar.gz in backups/ by modification time (a restore's safety copy last)
  local f best="" best_t=-1 t
  for f in "$BACKUPS"/*.tar.gz; do
    [ -f "$f" ] || continue
    t=$(mtime "$f")
    case "${f##*/}" in pre_restore_*) t=$((t - 10000000000)) ;; esac
    if [ "$t" -gt "$best_t" ]; then best=$f; best_t=$t; fi
  done
  echo "$best"
}
backups_newest_first() {
  local f
  for f in "$BACKUPS"/*.tar.gz; do
    if [ -f "$f" ]; then printf '%s\t%s\n' "$(mtime "$f")" "$f"; fi
  done | sort -rn | cut -f2-
}

# ------------------------------------------------------------------------------------------------
# status

cmd_status() {
  [ $# -eq 0 ] || die "status takes no arguments"
  if [ -d "$WORKSPACE" ]; then
    df -hP "$WORKSPACE" | awk -v w="$WORKSPACE" 'NR==2 {printf "volume     %s: %s used of %s (%s), %s free\n", w, $3, $2, $5, $4}'
  else
    echo "volume     $WORKSPACE does not exist (on RunPod attach a network volume there; elsewhere set WORKSPACE)"
  fi
  if [ ! -d "$ART" ]; then
    echo "artifacts  none yet at $ART (set NANOCHAT_BASE_DIR if they are elsewhere)"
  else
    echo "artifacts  $ART: $(human "$(size_of "$ART")")"
    echo "checkpoints"
    local phase t steps latest count temps any
    for phase in "${PHASE_DIRS[@]}"; do
      any=0
      for t in "$ART/$phase"/*; do
        [ -d "$t" ] || continue
        any=1
        steps=$(complete_steps "$t")
        temps=$(find "$t" -mindepth 1 -maxdepth 1 -name '.step_*' | wc -l)
        if [ -z "$steps" ]; then
          echo "  $phase/${t##*/}: no complete step"
        else
          latest=$(tail -n1 <<<"$steps")
          count=$(wc -l <<<"$steps")
          echo "  $phase/${t##*/}: latest step $latest ($count saved, $(human "$(size_of "$t")"))$([ "$temps" -gt 0 ] && echo ", $temps temp dir(s)")"
        fi
      done
      [ "$any" = 1 ] || echo "  $phase: none"
    done
    if [ -f "$ART/tokenizer/tokenizer.json" ]; then
      echo "tokenizer  present ($ART/tokenizer/tokenizer.json)"
    else
      echo "tokenizer  missing (train it: python -m scripts.tok_train)"
    fi
    local d line=""
    for d in "$ART"/base_data "$ART"/base_data_* "$ART"/chat_data; do
      [ -d "$d" ] || continue
      line+="${line:+; }${d##*/} $(find "$d" -maxdepth 1 -name '*.parquet' | wc -l) shards $(human "$(size_of "$d")")"
    done
    echo "data       ${line:-none}"
  fi
  if [ -f "$REPORT" ]; then
    echo "report     present ($REPORT, $(human "$(size_of "$REPORT")"))"
  else
    echo "report     missing ($REPORT)"
  fi
  local f n=0
  echo "backups    $BACKUPS"
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    n=$((n + 1))
    printf '  %-48s %8s  %s  %s\n' "${f##*/}" "$(human "$(size_of "$f")")" "$(date -d "@$(mtime "$f")" '+%Y-%m-%d %H:%M' 2>/dev/null || echo '?')" \
      "$([ -f "$f.sha256" ] && echo "sha256 beside" || echo "no .sha256")"
  done < <(backups_newest_first)
  [ "$n" -gt 0 ] || echo "  none (make one: $PROG backup)"
  local runs
  runs=$(running_runs | tr '\n' ' ')
  [ -z "$runs" ] || echo "running    ${runs% } (dev/launch.sh status)"
}

# ------------------------------------------------------------------------------------------------
# backup

BACKUP_PATH=""
do_backup() {  # name no_data(0|1): writes $BACKUPS/name.tar.gz (+ .sha256), sets BACKUP_PATH
  local name=$1 no_data=$2
  need_workspace
  name=${name%.tar.gz}
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "backup name '$name' must be letters, digits, '.', '_' or '-' (no '/', not starting with '.')"
  local final="$BACKUPS/$name.tar.gz"
  [ ! -e "$final" ] || die "$final already exists: pick another name"
  [ -d "$ART" ] || [ -f "$REPORT" ] || die "nothing to back up: no artifacts at $ART and no report at $REPORT (set NANOCHAT_BASE_DIR if your artifacts are elsewhere)"
  case "$BACKUPS/" in "$ART"/*) die "the backups folder $BACKUPS is inside the artifacts $ART: set NANOCHAT_BASE_DIR to a subfolder such as $WORKSPACE/nanochat_artifacts" ;; esac
  mkdir -p "$BACKUPS"
  local r
  for r in $(running_runs); do
    warn "run $r is running: checkpoints it saves meanwhile may be missing or fail the backup (stop it first: bash dev/launch.sh stop $r)"
  done

  local excludes=(--anchored) data_dirs=() d
  if [ "$no_data" = 1 ]; then
    excludes+=(--exclude=./base_data --exclude='./base_data_*' --exclude=./chat_data)
    for d in "$ART"/base_data "$ART"/base_data_* "$ART"/chat_data; do
      if [ -e "$d" ]; then data_dirs+=("$d"); fi
    done
  fi
  excludes+=(--no-anchored --exclude='.step_*' --exclude='*.part')
  local need free
  need=$(( $(size_of "$ART" "$REPORT") - $(size_of "${data_dirs[@]}") ))
  free=$(free_bytes "$BACKUPS")
  if [ "$need" -gt "$free" ]; then
    die "the backup needs up to $(human "$need") but $BACKUPS has $(human "$free") free: delete old files ($PROG cleanup) or leave the data shards out (--no-data)"
  fi

  local tmp="$BACKUPS/.$name.tar.gz.partial" tmpsha="$BACKUPS/.$name.tar.gz.sha256.partial" info
  info=$(mktemp -d "${TMPDIR:-/tmp}/nanochat_backup.XXXXXX")
  CLEANUP+=("$tmp" "$tmpsha" "$info")
  {
    echo "created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host=$(hostname 2>/dev/null || echo unknown)"
    echo "artifacts=$ART"
    echo "no_data=$no_data"
    echo "commit=$(git -C "$(dirname "$0")" rev-parse HEAD 2>/dev/null || echo unknown)"
  } > "$info/BACKUP_INFO"
  local compress=(--gzip)
  command -v pigz >/dev/null 2>&1 && compress=(--use-compress-program=pigz)  # same format, all cores

  local members=()
  [ -d "$ART" ] && members+=(-C "$ART" .)
  [ -f "$REPORT" ] && members+=(-C "$WORKSPACE" "${REPORT##*/}")
  members+=(-C "$info" BACKUP_INFO)
  echo "archiving $ART$([ "$no_data" = 1 ] && echo " (without data shards)")$([ -f "$REPORT" ] && echo " and $REPORT") -> $final"
  local rc=0
  # --hard-dereference: a hard-linked file is stored as a copy, never as a link restore would refuse
  tar --create --file="$tmp" "${compress[@]}" --index-file="$info/created" --verbose --hard-dereference \
    --transform='s,^\.,artifacts,S' "${excludes[@]}" "${members[@]}" || rc=$?
  if [ "$rc" = 1 ]; then  # GNU tar: a file changed while it was read (a running run's metrics.jsonl)
    warn "some files changed while being archived (see tar's message above): they may be cut mid-write; checkpoint step folders are complete or absent"
  elif [ "$rc" != 0 ]; then
    die "writing $tmp failed (disk full? files deleted by a running run? see tar's message above); no backup was kept"
  fi
  # verify: the whole archive decompresses and lists exactly what was written
  if ! tar -tzf "$tmp" > "$info/listed"; then
    die "the archive just written does not read back (disk or filesystem problem); no backup was kept"
  fi
  if ! cmp -s <(sed 's,^\.,artifacts,' "$info/created" | LC_ALL=C sort) <(LC_ALL=C sort "$info/listed"); then
    die "the archive just written does not list every file that was archived; no backup was kept"
  fi
  local hash
  hash=$(sha256sum < "$tmp" | cut -d' ' -f1)
  printf '%s  %s\n' "$hash" "$name.tar.gz" > "$tmpsha"
  sync "$tmp" "$tmpsha" 2>/dev/null || true
  mv "$tmp" "$final"
  mv "$tmpsha" "$final.sha256"
  BACKUP_PATH=$final
  echo "backup written: $final ($(human "$(size_of "$final")"), $(wc -l < "$info/listed") entries, sha256 in $final.sha256)"
}

cmd_backup() {
  local name="" no_data=0 a
  for a in "$@"; do
    case "$a" in
      --no-data) no_data=1 ;;
      -*) die "unknown backup option $a (only --no-data)" ;;
      *) [ -z "$name" ] || die "backup takes one NAME, got '$name' and '$a'"; name=$a ;;
    esac
  done
  [ -n "$name" ] || name=$(unused_name nanochat_backup)
  do_backup "$name" "$no_data"
}

# ------------------------------------------------------------------------------------------------
# restore

resolve_archive() {  # NAME | NAME.tar.gz | PATH | latest -> path
  local x=$1
  if [ "$x" = latest ]; then
    x=$(latest_backup)
    [ -n "$x" ] || die "no backup in $BACKUPS"
    echo "$x"; return
  fi
  if [[ $x == */* ]] || [ -f "$x" ]; then
    [ -f "$x" ] || die "no archive at $x"
    echo "$x"; return
  fi
  x=${x%.tar.gz}
  if [ -f "$BACKUPS/$x.tar.gz" ]; then echo "$BACKUPS/$x.tar.gz"; return; fi
  local have
  have=$(backups_newest_first | sed 's,.*/,,; s,\.tar\.gz$,,' | tr '\n' ' ')
  have=${have% }
  die "no backup named $x in $BACKUPS (have: ${have:-none}); or give the archive's path"
}

# Every member is checked before anything is extracted, because tar creates whatever an archive
# describes: a symlink as the top folder (later moves would go through it), links out of the tree,
# device nodes, FIFOs, setuid files. Allowed: regular files and directories, at artifacts/...,
# plus the report and BACKUP_INFO as top-level files, and symlinks under artifacts/ whose target
# cannot leave the tree: relative without '..' (at or below the link's own folder; such links
# chained stay below too), or absolute into $ART itself (dev/launch.sh --test links its scratch
# base dir that way). No member may sit under a symlink or appear twice. Modelled on Python's
# tarfile 'data' filter (PEP 706), checked here because Python before 3.12 lacks it. A bomb is
# refused at the header that declares too much, before its data is decompressed.
# Prints "BYTES ENTRIES" (BYTES: what extraction takes on disk, in 4 KiB blocks) or the reason.
inspect_members() {  # archive
  python3 - "$1" "$ART" "$(wc -c < "$1")" "$RESTORE_MAX_RATIO" "$RESTORE_RATIO_FLOOR" <<'PY'
import sys
import tarfile
import zlib

archive, art = sys.argv[1], sys.argv[2]
packed, max_ratio, floor = (int(x) for x in sys.argv[3:6])
BLOCK = 4096
KINDS = {tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
         tarfile.FIFOTYPE: "a FIFO", tarfile.CONTTYPE: "a contiguous file", tarfile.GNUTYPE_SPARSE: "a sparse file"}


def refuse(reason):
    print(reason)
    sys.exit(3)


def plain(text):  # no control characters: names must list and print as they are
    return bool(text) and not any(ord(c) < 32 or ord(c) == 127 for c in text)


def parts_of(name):  # a relative member path without '', '.' or '..' components -> its parts
    parts = name.split("/")
    if not plain(name) or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        refuse(f"holds the unsafe path {name!r}")
    return parts


def target_stays_inside(target):
    if not plain(target):
        return False
    if target.startswith("/"):
        if target != art and not target.startswith(art + "/"):
            return False
        target = target[len(art):]
    return ".." not in target.split("/")


seen, links, total = set(), set(), 0
try:
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar:
            name = m.name.rstrip("/") if m.isdir() else m.name
            parts = parts_of(name)
            under_art = parts[0] == "artifacts" and len(parts) > 1
            if name in seen:
                refuse(f"holds {name!r} twice")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in links:
                    refuse(f"holds {name!r} inside the symlink {'/'.join(parts[:i])!r}")
            if m.mode & 0o7000:
                refuse(f"gives {name!r} setuid, setgid or sticky bits (mode {m.mode:o})")
            if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                if not under_art and name not in ("nanochat_final_report.md", "BACKUP_INFO"):
                    refuse(f"holds the file {name!r} outside artifacts/ (not a runpod_storage.sh backup)")
                total += -(-m.size // BLOCK) * BLOCK
            elif m.type == tarfile.DIRTYPE:
                if parts[0] != "artifacts":
                    refuse(f"holds the folder {name!r} outside artifacts/")
            elif m.type == tarfile.SYMTYPE:
                if not under_art or not target_stays_inside(m.linkname):
                    refuse(f"holds the symlink {name!r} -> {m.linkname!r}, which leaves the artifacts")
                links.add(name)
            else:
                refuse(f"holds {KINDS.get(m.type, f'an entry of type {m.type!r}')} {name!r}")
            seen.add(name)
            total += BLOCK
            if total > floor and total > max_ratio * packed:
                refuse(f"unpacks to over {total / 2**30:.1f}GiB from {packed / 2**20:.1f}MiB "
                       f"(over {max_ratio}x, a decompression bomb?)")
except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    refuse(f"is corrupt or truncated ({e})")
print(total, len(seen))
PY
}

ARCHIVE_HAS_DATA=0
RESTORE_UNPACKED=0
verify_archive() {  # refuses (exit 1) unless the sha matches, the archive reads fully and looks like ours
  local a=$1 listing
  if [ -f "$a.sha256" ]; then
    local want got
    want=$(awk 'NR==1 {print $1}' "$a.sha256")
    got=$(sha256sum < "$a" | cut -d' ' -f1)
    [ "$want" = "$got" ] || die "$a does not match its checksum $a.sha256 (corrupt or incomplete copy): nothing was changed; copy it again"
    echo "checksum ok ($a.sha256)"
  else
    warn "no $a.sha256 beside the archive: checking that it reads fully instead"
  fi
  command -v python3 >/dev/null 2>&1 || die "restore needs python3 to check the archive's members: install it; nothing was changed"
  local checked
  checked=$(inspect_members "$a") || die "$a ${checked:-could not be inspected}: refusing it; nothing was changed"
  RESTORE_UNPACKED=${checked%% *}
  listing=$(mktemp "${TMPDIR:-/tmp}/nanochat_listing.XXXXXX")
  CLEANUP+=("$listing")
  tar -tzf "$a" > "$listing" 2>/dev/null || die "$a is corrupt or truncated (it does not read to the end): nothing was changed"
  local bad
  bad=$(grep -Ev '^(artifacts(/.*)?|nanochat_final_report\.md|BACKUP_INFO)$' "$listing" | head -n1 || true)
  [ -z "$bad" ] || die "$a is not a runpod_storage.sh backup (it holds '$bad'): nothing was changed"
  if grep -Eq '(^|/)\.\.(/|$)' "$listing"; then die "$a holds paths with '..': refusing it; nothing was changed"; fi
  grep -Eq '^(artifacts/?|nanochat_final_report\.md)$' "$listing" || die "$a holds neither artifacts nor a report: nothing was changed"
  check_room "nothing was changed"
  ARCHIVE_HAS_DATA=0
  if grep -Eq '^artifacts/(base_data|base_data_[^/]*|chat_data)/?$' "$listing"; then ARCHIVE_HAS_DATA=1; fi
  echo "archive ok ($(wc -l < "$listing") entries)"
}

check_room() {  # what_happened: refuses unless the unpacked archive fits beside the current artifacts
  local dir need free
  dir=$(existing_dir "$(dirname "$ART")")
  need=$((RESTORE_UNPACKED + RESTORE_UNPACKED / 20 + RESTORE_MARGIN))
  free=$(free_bytes "$dir")
  if [ "$need" -gt "$free" ]; then
    die "the restore unpacks $(human "$RESTORE_UNPACKED") beside the current artifacts and needs $(human "$need") free with a margin, but $dir has $(human "$free"): free space ($PROG cleanup) and rerun; $1"
  fi
}

confirm() {  # prompt; refuses without a terminal
  local answer
  if [ ! -t 0 ]; then
    die "restore replaces $ART and asks first, but stdin is not a terminal: run again with -y to confirm"
  fi
  read -r -p "$1 [y/N] " answer || answer=""
  case "$answer" in y|Y|yes|YES) ;; *) echo "nothing changed"; exit 1 ;; esac
}

cmd_restore() {
  local target="" yes=0 a
  for a in "$@"; do
    case "$a" in
      -y|--yes) yes=1 ;;
      -*) die "unknown restore option $a (only -y)" ;;
      *) [ -z "$target" ] || die "restore takes one NAME or PATH"; target=$a ;;
    esac
  done
  [ -n "$target" ] || die "restore needs a backup NAME, an archive PATH, or 'latest' (see: $PROG status)"
  if [ -L "$ART" ]; then  # moving files in and out through a link would write wherever it points
    die "$ART is a symlink (to $(readlink "$ART")): restore never writes through one; set NANOCHAT_BASE_DIR to the real folder and rerun; nothing was changed"
  fi
  local archive
  archive=$(resolve_archive "$target")
  archive=$(cd "$(dirname "$archive")" && pwd)/${archive##*/}
  verify_archive "$archive"
  local r
  for r in $(running_runs); do
    die "run $r is running and writes into $ART: stop it first (bash dev/launch.sh stop $r)"
  done

  # -T on every mv below: rename onto that name itself, never into a folder (or a link to one) there
  local have_current=0
  if [ -d "$ART" ] && [ -n "$(ls -A "$ART" 2>/dev/null)" ]; then have_current=1; fi
  [ -f "$REPORT" ] && have_current=1
  if [ "$have_current" = 1 ]; then
    echo "restoring $archive replaces $ART ($(human "$(size_of "$ART")")) and $REPORT; they are backed up first"
    [ "$yes" = 1 ] || confirm "restore $archive over the current artifacts?"
    # data shards the archive lacks stay in place (moved into the restored tree), so they need no copy
    local safety_no_data=1
    [ "$ARCHIVE_HAS_DATA" = 1 ] && safety_no_data=0
    do_backup "$(unused_name pre_restore)" "$safety_no_data"
    echo "safety backup: $BACKUP_PATH (restore it to undo)"
    check_room "$ART is unchanged (the safety backup $BACKUP_PATH is kept)"  # the backup took space too
  else
    [ "$yes" = 1 ] || confirm "restore $archive into $ART?"
  fi

  local parent tmpd ts
  parent=$(dirname "$ART")
  ts=$(timestamp)
  mkdir -p "$parent"
  tmpd=$(mktemp -d "$parent/.nanochat_restore.XXXXXX")
  CLEANUP+=("$tmpd")
  echo "extracting into $tmpd"
  # --no-same-owner: as root tar would hand files to whichever uid the archive names
  tar -xzf "$archive" -C "$tmpd" --no-same-owner || die "extracting $archive failed (disk full?): $ART is unchanged"
  rm -f "$tmpd/BACKUP_INFO"
  if [ -L "$tmpd/artifacts" ] || [ -L "$tmpd/${REPORT##*/}" ]; then  # inspect_members refused these already
    die "$archive unpacked a symlink at the top: refusing it; $ART is unchanged"
  fi

  local old="$parent/.${ART##*/}.before_restore.$ts"
  local kept_ok=1 d
  if [ -d "$tmpd/artifacts" ]; then
    if [ -e "$ART" ]; then
      mv -T "$ART" "$old" || die "could not move $ART aside to $old: nothing was changed"
      RESTORE_OLD=$old
    fi
    if ! mv -T "$tmpd/artifacts" "$ART"; then
      die "could not move the restored files into $ART"  # on_exit moves the old artifacts back
    fi
  fi
  if [ -n "$RESTORE_OLD" ]; then
    for d in "$old"/base_data "$old"/base_data_* "$old"/chat_data; do
      [ -d "$d" ] && [ ! -e "$ART/${d##*/}" ] && [ ! -L "$ART/${d##*/}" ] || continue
      if mv -T "$d" "$ART/${d##*/}"; then echo "kept ${d##*/}/ (the archive has no copy of it)"; else kept_ok=0; fi
    done
  fi
  RESTORE_OLD=""
  if [ -f "$tmpd/${REPORT##*/}" ]; then
    mkdir -p "$WORKSPACE"
    mv -fT "$tmpd/${REPORT##*/}" "$REPORT"  # -T: a link at $REPORT is replaced, not followed
  fi
  if [ -e "$old" ]; then
    if [ "$kept_ok" = 1 ]; then rm -rf -- "$old"; else warn "some data dirs could not be moved back: the previous artifacts are kept in $old"; fi
  fi
  echo "restored $archive into $ART"
}

# ------------------------------------------------------------------------------------------------
# download / upload

cmd_download() {
  [ $# -eq 0 ] || die "download takes no arguments"
  local ip=${RUNPOD_PUBLIC_IP:-} port=${RUNPOD_TCP_PORT_22:-} host latest q
  if [ -n "$ip" ] && [ -n "$port" ]; then
    host="root@$ip"
    echo "# This pod's SSH: $host port $port (from RUNPOD_PUBLIC_IP / RUNPOD_TCP_PORT_22)."
  else
    host="root@<POD_IP>"; port="<SSH_PORT>"
    echo "# RUNPOD_PUBLIC_IP / RUNPOD_TCP_PORT_22 are not set (no public IP, or not a RunPod pod)."
    echo "# Replace <POD_IP> and <SSH_PORT> with the values in the RunPod console: Connect ->"
    echo "# 'SSH over exposed TCP' shows: ssh root@<POD_IP> -p <SSH_PORT> (expose TCP port 22 on the pod)."
    echo "# Without a public IP: runpodctl send FILE here, then runpodctl receive CODE on your computer."
  fi
  echo "# Run these on your own computer, not on the pod (add -i ~/.ssh/KEY if your key is not the default)."
  latest=$(latest_backup)
  if [ -n "$latest" ]; then
    q=$latest
    echo
    echo "# latest backup: ${latest##*/} ($(human "$(size_of "$latest")")); rsync resumes an interrupted copy"
    echo "rsync -avP -e 'ssh -p $port' '$host:$q' '$host:$q.sha256' ."
    echo "scp -P $port '$host:$q' '$host:$q.sha256' ."
    echo "sha256sum -c ${latest##*/}.sha256    # macOS: shasum -a 256 -c ${latest##*/}.sha256"
  else
    echo
    echo "# no backup yet: make one on the pod first: $PROG backup --no-data"
  fi
  echo
  echo "# the artifacts folder itself (checkpoints, tokenizer, report, logs; data shards left out):"
  echo "rsync -avP -e 'ssh -p $port' --exclude=base_data --exclude='base_data_*' --exclude=chat_data --exclude='.step_*' --exclude='*.part' '$host:$ART/' ./nanochat_artifacts/"
  if [ -f "$REPORT" ]; then
    echo
    echo "# the final report:"
    echo "scp -P $port '$host:$REPORT' ."
  fi
}

cmd_upload() {
  local url=${1:-} name=${2:-}
  [ $# -le 2 ] || die "upload takes a URL and optionally a backup NAME"
  [ -n "$url" ] || die "upload needs a destination: $PROG upload s3://bucket/prefix (or gs://bucket/prefix) [NAME]"
  local archive
  if [ -n "$name" ]; then archive=$(resolve_archive "$name"); else
    archive=$(latest_backup)
    [ -n "$archive" ] || die "no backup to upload in $BACKUPS: make one first ($PROG backup --no-data)"
  fi
  local dest
  if [[ $url == *.tar.gz ]]; then dest=$url; else dest="${url%/}/${archive##*/}"; fi
  local tool
  case "$url" in
    s3://?*) tool=(aws s3 cp)
      command -v aws >/dev/null 2>&1 || die "the aws CLI is not installed: pip install awscli, then aws configure (or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; other S3 stores: AWS_ENDPOINT_URL)" ;;
    gs://?*) tool=(gsutil cp)
      command -v gsutil >/dev/null 2>&1 || die "gsutil is not installed: pip install gsutil, then gsutil config (or install the Google Cloud SDK and run gcloud auth login)" ;;
    *) die "upload goes to s3://bucket/prefix or gs://bucket/prefix, got '$url'" ;;
  esac
  echo "uploading ${archive##*/} ($(human "$(size_of "$archive")")) to $dest"
  "${tool[@]}" "$archive" "$dest" || die "upload failed (see ${tool[0]}'s message above); the backup is still in $BACKUPS"
  if [ -f "$archive.sha256" ]; then
    "${tool[@]}" "$archive.sha256" "$dest.sha256" || die "uploading the checksum failed (see above); the archive itself was uploaded"
  fi
  echo "uploaded: $dest"
  echo "to restore on a new pod: ${tool[*]} $dest . && ${tool[*]} $dest.sha256 . && $PROG restore ./${dest##*/} -y"
}

# ------------------------------------------------------------------------------------------------
# cleanup

DOOMED=()
REASONS=()
doom() { DOOMED+=("$1"); REASONS+=("$2"); }

cmd_cleanup() {
  local keep=1 keep_backups=2 keep_logs=10 yes=0
  while [ $# -gt 0 ]; do
    case "$1" in
      -y|--yes) yes=1 ;;
      --keep=*) keep=${1#*=} ;;
      --keep) keep=${2:-}; shift ;;
      --keep-backups=*) keep_backups=${1#*=} ;;
      --keep-backups) keep_backups=${2:-}; shift ;;
      --keep-logs=*) keep_logs=${1#*=} ;;
      --keep-logs) keep_logs=${2:-}; shift ;;
      *) die "unknown cleanup option $1 (--keep N, --keep-backups N, --keep-logs N, -y)" ;;
    esac
    shift
  done
  [[ $keep =~ ^[0-9]+$ ]] && [ "$keep" -ge 1 ] || die "--keep must be a number >= 1 (the latest checkpoint of each phase/tag is always kept), got '$keep'"
  [[ $keep_backups =~ ^[0-9]+$ ]] && [ "$keep_backups" -ge 1 ] || die "--keep-backups must be a number >= 1 (the last backup is always kept), got '$keep_backups'"
  [[ $keep_logs =~ ^[0-9]+$ ]] || die "--keep-logs must be a number >= 0, got '$keep_logs'"

  local t steps latest s d n
  while IFS= read -r t; do
    [ -n "$t" ] || continue
    steps=$(complete_steps "$t")
    latest=$(tail -n1 <<<"$steps")
    if [ -n "$steps" ]; then
      while IFS= read -r s; do
        [ -n "$s" ] && doom "$(step_dir "$t" "$s")" "old checkpoint (keeping the latest $keep of ${t#"$ART"/})"
      done < <(head -n "-$keep" <<<"$steps")
    fi
    for d in "$t"/.step_* "$t"/step_*; do
      [ -d "$d" ] || continue
      case "${d##*/}" in
        .step_*)
          n=${d##*/.step_}; n=${n%%.*}
          # at or below the newest complete step it is dead; above it, a save may be running right now
          if { [[ $n =~ ^[0-9]+$ ]] && [ -n "$latest" ] && [ "$((10#$n))" -le "$latest" ]; } || ! recent "$d"; then
            doom "$d" "temp dir of an unfinished checkpoint save"
          fi ;;
        step_*) if [ ! -f "$d/meta.json" ] && ! recent "$d"; then doom "$d" "incomplete checkpoint (no meta.json)"; fi ;;
      esac
    done
  done < <(tag_dirs)

  local f
  if [ -d "$ART" ]; then
    while IFS= read -r -d '' f; do
      recent "$f" || doom "$f" "stale partial download"
    done < <(find "$ART" -name '*.part' -type f -print0)
    for d in "$(dirname "$ART")"/.nanochat_restore.*; do
      if [ -d "$d" ] && ! recent "$d"; then doom "$d" "temp dir of an interrupted restore"; fi
    done
    for d in "$(dirname "$ART")/.${ART##*/}".before_restore.*; do
      if [ -d "$d" ]; then warn "$d holds the artifacts from before an interrupted restore: check it and delete it by hand"; fi
    done
  fi

  local i=0 running
  running=" $(running_runs | tr '\n' ' ') "
  while IFS= read -r d; do
    [ -n "$d" ] || continue
    [[ $running == *" ${d##*/} "* ]] && continue
    i=$((i + 1))
    if [ "$i" -gt "$keep_logs" ]; then doom "$d" "old run logs (keeping the newest $keep_logs)"; fi
  done < <(for d in "$ART"/logs/*/; do if [ -d "$d" ]; then printf '%s\t%s\n' "$(mtime "$d")" "${d%/}"; fi; done | sort -rn | cut -f2-)

  i=0
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    i=$((i + 1))
    if [ "$i" -gt "$keep_backups" ]; then
      doom "$f" "old backup (keeping the newest $keep_backups)"
      if [ -f "$f.sha256" ]; then doom "$f.sha256" "its checksum"; fi
    fi
  done < <(backups_newest_first)
  for f in "$BACKUPS"/.*.partial; do
    if [ -e "$f" ] && ! recent "$f"; then doom "$f" "partial archive of an interrupted backup"; fi
  done

  if [ "${#DOOMED[@]}" -eq 0 ]; then
    echo "nothing to clean up"
    return 0
  fi
  local total=0 sz
  for i in "${!DOOMED[@]}"; do
    sz=$(size_of "${DOOMED[$i]}")
    total=$((total + sz))
    printf '%8s  %s  (%s)\n' "$(human "$sz")" "${DOOMED[$i]}" "${REASONS[$i]}"
  done
  if [ "$yes" != 1 ]; then
    echo "would free $(human "$total"); nothing was deleted: run again with -y to delete these ${#DOOMED[@]} items"
    return 0
  fi
  for f in "${DOOMED[@]}"; do
    rm -rf -- "$f"
  done
  echo "deleted ${#DOOMED[@]} items, freed $(human "$total")"
}

# ------------------------------------------------------------------------------------------------

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    status) cmd_status "$@" ;;
    backup) cmd_backup "$@" ;;
    restore) cmd_restore "$@" ;;
    download) cmd_download "$@" ;;
    upload) cmd_upload "$@" ;;
    cleanup) cmd_cleanup "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) echo "error: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"

# shellcheck shell=bash
# Sourced by speedrun.sh, runpod_speedrun.sh and dev/launch.sh: the GPUs a CUDA program will see.
# nvidia-smi lists every GPU of the machine and ignores CUDA_VISIBLE_DEVICES; CUDA keeps, in the
# order given, the entries of CUDA_VISIBLE_DEVICES that name a GPU (an index, a UUID or a unique
# UUID prefix) and ignores everything from the first entry that names none
# (https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#env-vars). Works before any
# Python environment exists.

# visible_gpu_rows: one line "index, uuid, name, memory MiB" per visible GPU, in CUDA's order
visible_gpu_rows() {
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  local rows
  rows=$(nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits 2>/dev/null) || return 0
  if [ -z "${CUDA_VISIBLE_DEVICES+x}" ]; then
    [ -z "$rows" ] || printf '%s\n' "$rows"
    return 0
  fi
  awk -F', *' -v want="$CUDA_VISIBLE_DEVICES" '
    { idx[NR] = $1; uuid[NR] = $2; line[NR] = $0 }
    END {
      n = split(want, entries, ",")
      for (e = 1; e <= n; e++) {
        key = entries[e]; gsub(/^ +| +$/, "", key)
        hit = 0; count = 0
        for (r = 1; r <= NR; r++) {
          if (key == idx[r] || (key ~ /^GPU-/ && index(uuid[r], key) == 1)) { hit = r; count++ }
        }
        if (count != 1 || used[hit]) exit
        used[hit] = 1
        print line[hit]
      }
    }' <<<"$rows"
}

visible_gpu_count() {
  visible_gpu_rows | grep -c . || true
}

# smallest_visible_gpu [N]: "memory MiB<TAB>name" of the GPU with the least memory among the first N
# visible ones (all when N is not given): the one that sizes the run; nothing without a GPU
smallest_visible_gpu() {
  visible_gpu_rows | head -n "${1:-1000}" | awk -F', *' '
    NR == 1 || $4 + 0 < mem { mem = $4 + 0; name = $3 }
    END { if (NR) printf "%d\t%s\n", mem, name }'
}

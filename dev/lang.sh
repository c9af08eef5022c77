# shellcheck shell=bash
# The run's language, NANOCHAT_LANG: en (the default) or ko (the Korean run). Sourced by speedrun.sh,
# runpod_speedrun.sh, dev/runcpu.sh and dev/launch.sh, so that the spelling, the Korean base dir and
# the rule that one base dir never holds both languages' artifacts live in one place.
# A base dir records its language in $NANOCHAT_BASE_DIR/language (written by speedrun.sh); a dir
# without that file is judged by its tokenizer (train_meta.json: --pattern=korean is the Korean run's)
# or, failing that, by finished speedrun stages (speedrun.sh ran English only before the file existed).

# lang_check: NANOCHAT_LANG (unset = en) is en or ko, exported; anything else stops in one line
lang_check() {
  NANOCHAT_LANG=${NANOCHAT_LANG:-en}
  case "$NANOCHAT_LANG" in
    en|ko) export NANOCHAT_LANG ;;
    *) echo "error: NANOCHAT_LANG=$NANOCHAT_LANG: use en (the default, English) or ko (the Korean run)" >&2; exit 1 ;;
  esac
}

# lang_base_dir DIR: this language's default for an English default base dir (ko: DIR_ko)
lang_base_dir() {
  if [ "$NANOCHAT_LANG" = ko ]; then echo "${1%/}_ko"; else echo "$1"; fi
}

# base_dir_lang DIR: the language of the run DIR holds (en | ko), nothing when it holds none
base_dir_lang() {
  local dir=$1 meta="$1/tokenizer/train_meta.json"
  if [ -f "$dir/language" ]; then
    head -n1 "$dir/language"
  elif [ -f "$meta" ]; then
    if grep -Eq '"pattern": *"korean"' "$meta"; then echo ko; else echo en; fi
  elif compgen -G "$dir/stages/*.done" > /dev/null; then
    echo en
  fi
}

# lang_refuse_other DIR: stop in one line when DIR holds the other language's run
lang_refuse_other() {
  local held
  held=$(base_dir_lang "$1")
  if [ -n "$held" ] && [ "$held" != "$NANOCHAT_LANG" ]; then
    echo "error: NANOCHAT_BASE_DIR=$1 holds a NANOCHAT_LANG=$held run and this is a NANOCHAT_LANG=$NANOCHAT_LANG one: their artifacts must not mix: unset NANOCHAT_BASE_DIR (each language has its own default) or point it at a fresh directory" >&2
    exit 1
  fi
}

# lang_claim DIR: refuse as lang_refuse_other, then record this run's language in DIR
lang_claim() {
  lang_refuse_other "$1"
  mkdir -p "$1"
  if [ ! -f "$1/language" ]; then echo "$NANOCHAT_LANG" > "$1/language.tmp" && mv "$1/language.tmp" "$1/language"; fi
}

# lang_options SCRIPT [ARGS...]: this language's options for SCRIPT (a scripts/ name), one a line,
# less those whose key ARGS already give (en: none). tok_train given --corpus=embedded-ko (offline)
# mixes in the embedded English corpus instead of FineWeb-Edu.
lang_options() {
  [ "$NANOCHAT_LANG" = ko ] || return 0
  local script=$1 mix=fineweb-edu opt opts=()
  shift
  local given=" $* "
  case "$given" in *" --corpus=embedded-ko "*) mix=embedded ;; esac
  case "$script" in
    tok_train) opts=(--corpus=ko --pattern=korean "--mix_corpus=$mix" --mix_share=0.2) ;;
    base_train|base_loss) opts=(--corpus=ko) ;;
    mid_train) opts=(--tasks=mid-ko --identity_name=나노챗) ;;
    chat_sft) opts=(--tasks=sft-ko --identity_name=나노챗) ;;
    base_eval) opts=('--tasks=CORE|KoBEST') ;;
    chat_eval) opts=('--tasks=all|korean') ;;
    *) return 0 ;;
  esac
  for opt in "${opts[@]}"; do
    case "$given" in *" ${opt%%=*}="*|*" ${opt%%=*} "*) ;; *) echo "$opt" ;; esac
  done
}

# Wall time of each CI phase. Sourced by the test scripts: `phase NAME` ends the running phase and starts NAME; a
# script's exit ends its last one (marked failed on a non-zero exit). Each ended phase is appended to the file
# $WIT_PHASE_LOG, when set, as "NAME<TAB>seconds<TAB>exit status"; `phase_report` prints that file as a table
# (.ci/run does, at its end, whatever happened).
_phase_name="" _phase_start=0

phase() {
  phase_end 0
  _phase_name=$1 _phase_start=$SECONDS
  echo "=== phase: $1" >&2
}

phase_end() {
  if [[ -n $_phase_name ]]; then
    printf '%s\t%d\t%d\n' "$_phase_name" $((SECONDS - _phase_start)) "$1" >>"${WIT_PHASE_LOG:-/dev/null}"
    _phase_name=""
  fi
}

trap 'phase_end $?' EXIT

timed() {  # timed NAME COMMAND...: COMMAND as a phase of its own, for phases that run side by side
  local name=$1 start=$SECONDS status=0
  shift
  "$@" || status=$?
  printf '%s\t%d\t%d\n' "$name" $((SECONDS - start)) "$status" >>"${WIT_PHASE_LOG:-/dev/null}"
  return "$status"
}

side_by_side() {  # side_by_side TITLE FUNCTION [TITLE FUNCTION ...]: all at once, each into its own log; then
  # each log printed whole under its title, and a non-zero status if any failed
  local logs titles=() pids=() codes=() i code status=0
  logs=$(mktemp -d)
  while (($#)); do
    titles+=("$1")
    "$2" >"$logs/${#pids[@]}" 2>&1 &
    pids+=($!)
    shift 2
  done
  for i in "${!pids[@]}"; do
    code=0
    wait "${pids[$i]}" || code=$?
    codes+=("$code")
  done
  for i in "${!pids[@]}"; do
    echo "=== ${titles[$i]} (exit ${codes[$i]})"
    cat "$logs/$i"
    ((codes[i] == 0)) || status=1
  done
  rm -rf "$logs"
  return "$status"
}

_minutes() { printf '%d.%d min' $(($1 / 60)) $(($1 % 60 * 10 / 60)); }

phase_report() {  # phase_report LOG WALL_SECONDS: phases in the order they ended (some may overlap)
  local log=$1 wall=$2 name seconds status
  echo "=== wall time per phase"
  while IFS=$'\t' read -r name seconds status; do
    printf '  %-18s %5d s  %9s%s\n' "$name" "$seconds" "$(_minutes "$seconds")" \
      "$([[ $status == 0 ]] || echo "  FAILED (exit $status)")"
  done <"$log"
  printf '  %-18s %5d s  %9s\n' "all, wall clock" "$wall" "$(_minutes "$wall")"
}

# Sourced by CI scripts: `settle STORE` waits until the build-script runs
# traced behind a build (cache.trace_behind; each twin keeps
# STORE/tmp/twin.PID.* while it lives) and every store writer (they hold
# STORE/gc.lock shared) are done, as `kache sync --push` does.
settle() {
  local d pid busy=1
  while [ "$busy" = 1 ]; do
    busy=0
    for d in "$1"/tmp/twin.*; do
      pid=${d##*/twin.}
      pid=${pid%%.*}
      if [ -e "$d" ] && [ -d "/proc/$pid" ]; then busy=1; fi
    done
    [ "$busy" = 0 ] || sleep 0.2
  done
  if [ -e "$1/gc.lock" ]; then flock "$1/gc.lock" true; fi
}

#!/usr/bin/env bash
# Runs `foundations train` as N real JAX processes on this machine (CPU, gloo collectives), each
# with DEVICES simulated devices: a multi-host run without the hosts. Output lines are prefixed
# with the process index; the exit status is the first non-zero one of the processes.
#
#   launch/multihost_local.sh [--dry-run] N CONFIG [overrides...] [--run-dir DIR]
#   env: DEVICES (devices per process, default 4), PORT (coordinator port, default a free one),
#        PYTHON (default python3), COMMAND (the foundations command, default train; sft, ...)
set -euo pipefail

usage() {
  echo "usage: $0 [--dry-run] N CONFIG [section.key=value ...] [--run-dir DIR]" >&2
  exit 2
}

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 2 ]] || usage
num_processes=$1
config=$2
shift 2
[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || usage

python=${PYTHON:-python3}
devices=${DEVICES:-4}
if [[ -n "${PORT:-}" ]]; then
  port=$PORT
elif [[ $dry_run == 1 ]]; then
  port=PORT
else
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

pids=()
for ((i = 0; i < num_processes; i++)); do
  env_vars=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
    "JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "JAX_NUM_PROCESSES=$num_processes"
    "JAX_PROCESS_ID=$i")
  command=("$python" -m foundations.cli "${COMMAND:-train}" "$config" "$@" --no-progress)
  if [[ $dry_run == 1 ]]; then
    echo "env ${env_vars[*]} ${command[*]} &"
    continue
  fi
  env "${env_vars[@]}" "${command[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
  echo "[launch] process $i: pid $!"
done
[[ $dry_run == 1 ]] && exit 0

status=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "[launch] process $i exited normally"
  else
    code=$?
    echo "[launch] process $i failed with exit status $code"
    [[ $status != 0 ]] || status=$code
  fi
done
exit "$status"

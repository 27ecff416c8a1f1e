#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: creates it (or reuses one of that name), copies this checkout
# (or clones --repo) to every worker, installs, runs the same `foundations train` on all workers
# (JAX finds its peers from the TPU metadata), and streams their output here.
#
#   launch/tpu_vm.sh [options] CONFIG [section.key=value ...]   create/reuse, install, train
#   launch/tpu_vm.sh [options] --delete                          delete the slice (and its queue)
# options:
#   --name NAME        TPU VM name (default $TPU_NAME or foundations)
#   --zone ZONE        (default $ZONE or us-east5-a)
#   --type TYPE        accelerator type, e.g. v5p-32, v6e-16 (default $TPU_TYPE or v5p-8)
#   --version V        TPU software version (default $TPU_VERSION or v2-alpha-tpuv5)
#   --project P        gcloud project (default: gcloud's configured one)
#   --queued           request through a queued resource and wait until it is ACTIVE
#   --spot             spot capacity (cheaper, may be preempted; resume from checkpoints)
#   --repo URL         git clone URL instead of copying this checkout
#   --run-dir DIR      run directory on the workers; must be shared by all workers, e.g. a
#                      gcsfuse mount (default /mnt/runs/<config name>; see --bucket)
#   --bucket B         mount gs://B at /mnt on every worker with gcsfuse
#   --delete-after     delete the slice when training ends
#   --dry-run          print the commands instead of running them
set -euo pipefail

name=${TPU_NAME:-foundations}
zone=${ZONE:-us-east5-a}
tpu_type=${TPU_TYPE:-v5p-8}
version=${TPU_VERSION:-v2-alpha-tpuv5}
project=""
queued=0
spot=0
repo=""
run_dir=""
bucket=""
delete_only=0
delete_after=0
dry_run=0
args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --type) tpu_type=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --repo) repo=$2; shift 2 ;;
    --run-dir) run_dir=$2; shift 2 ;;
    --bucket) bucket=$2; shift 2 ;;
    --delete) delete_only=1; shift ;;
    --delete-after) delete_after=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done

# show CMD...: print a command with shell quoting where needed, so it can be pasted
show() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}

# run CMD...: execute it, or with --dry-run print it
run() {
  if [[ $dry_run == 1 ]]; then
    show "$@"
  else
    "$@"
  fi
}

where=(--zone "$zone")
[[ -z "$project" ]] || where+=(--project "$project")
tpu=(gcloud compute tpus tpu-vm)
queue=(gcloud compute tpus queued-resources)

delete_slice() {
  if [[ $queued == 1 ]]; then
    run "${queue[@]}" delete "$name" "${where[@]}" --force --quiet
  else
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
}

if [[ $delete_only == 1 ]]; then
  delete_slice
  exit 0
fi
if [[ ${#args[@]} -lt 1 ]]; then
  echo "usage: $0 [options] CONFIG [section.key=value ...]  (or --delete; --help)" >&2
  exit 2
fi
config=${args[0]}
overrides=("${args[@]:1}")
run_dir=${run_dir:-/mnt/runs/$(basename "${config%.*}")}

# 1. the slice: reuse it when it exists, else create it (directly or through a queued resource)
exists=0
if [[ $dry_run == 0 ]] && "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  exists=1
  echo "[tpu] reusing $name"
fi
if [[ $exists == 0 ]]; then
  capacity=()
  [[ $spot == 0 ]] || capacity=(--spot)
  if [[ $queued == 1 ]]; then
    run "${queue[@]}" create "$name" --node-id "$name" "${where[@]}" \
      --accelerator-type "$tpu_type" --runtime-version "$version" "${capacity[@]}"
    if [[ $dry_run == 1 ]]; then
      echo "# wait until: ${queue[*]} describe $name ${where[*]} --format='value(state.state)' prints ACTIVE"
    else
      until [[ "$("${queue[@]}" describe "$name" "${where[@]}" --format='value(state.state)')" == ACTIVE ]]; do
        echo "[tpu] waiting for queued resource $name ..."
        sleep 60
      done
    fi
  else
    run "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$tpu_type" \
      --version "$version" "${capacity[@]}"
  fi
fi

on_all_workers() {
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$1"
}

# 2. the code on every worker, then the install
if [[ -n "$repo" ]]; then
  on_all_workers "rm -rf ~/foundations && git clone --depth 1 $repo ~/foundations"
else
  archive=/tmp/foundations-$name.tar.gz
  run git archive --format=tar.gz --prefix=foundations/ -o "$archive" HEAD
  run "${tpu[@]}" scp "$archive" "$name:foundations.tar.gz" "${where[@]}" --worker=all
  on_all_workers "rm -rf ~/foundations && tar xzf ~/foundations.tar.gz -C ~"
fi
on_all_workers "cd ~/foundations && pip install -q -U 'jax[tpu]' -e ."
if [[ -n "$bucket" ]]; then
  on_all_workers "sudo mkdir -p /mnt && sudo chown \$USER /mnt && gcsfuse --implicit-dirs $bucket /mnt"
fi

# 3. the same command on all workers; gcloud streams every worker's output here
train_command="set -o pipefail; cd ~/foundations && python3 -m foundations.cli train $config"
for override in "${overrides[@]}"; do
  train_command+=" $(printf '%q' "$override")"
done
train_command+=" --run-dir $run_dir --no-progress 2>&1 | tee -a ~/train.log"
status=0
on_all_workers "$train_command" || status=$?

# 4. clean up when asked
if [[ $delete_after == 1 ]]; then
  delete_slice
fi
exit "$status"

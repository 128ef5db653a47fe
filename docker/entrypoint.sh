#!/usr/bin/env bash
# Entrypoint of the equirecon image: turns the cluster's environment into one launch command and
# `exec`s it (so SIGTERM/SIGUSR2 of Slurm preemption or `docker stop` reach the launcher).
#
#   <image> pretrain --config FILE [key=value …]   an equirecon verb (data, pretrain, eval, …)
#   <image> equirecon pretrain …                   the same
#   <image> torchrun … -m equirecon pretrain …     anything else runs exactly as given
#
# How `pretrain` is launched (EQUIRECON_LAUNCHER=auto, the default, picks the first that applies):
#   env      RANK and WORLD_SIZE are already set (the container runs inside torchrun, or a
#            launcher that sets them): run `equirecon pretrain …` as is, environment untouched.
#   node     inside a Slurm step with one task per node (one container per node, e.g.
#            `srun --ntasks-per-node=1 --container-image=…` or `srun docker run …`):
#            torchrun --nnodes=$SLURM_STEP_NUM_NODES --node_rank=$SLURM_NODEID
#                     --nproc_per_node=$GPUS_PER_NODE --rdzv_backend=c10d
#                     --rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT --rdzv_id=$SLURM_JOB_ID
#                     -m equirecon pretrain …
#            MASTER_ADDR: set, else the first host of the step's node list (`scontrol show
#            hostnames` when scontrol is in the container, else parsed here).
#            MASTER_PORT: set, else 29500 + SLURM_JOB_ID % 1000 (the same on every node).
#   task     inside a Slurm step with one task per GPU: RANK/WORLD_SIZE/LOCAL_RANK/
#            LOCAL_WORLD_SIZE from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, no torchrun.
#   torchrun NNODES or GPUS_PER_NODE/NPROC_PER_NODE set (plain `docker run` on each node):
#            torchrun with --nnodes=$NNODES --node_rank=$NODE_RANK, rendezvous at
#            $MASTER_ADDR:$MASTER_PORT (MASTER_ADDR is required when NNODES > 1).
#   single   otherwise: one process.
# EQUIRECON_LAUNCHER=node|task|torchrun|env|single forces a mode.
# GPUS_PER_NODE (alias NPROC_PER_NODE): set, else SLURM_GPUS_ON_NODE, else the devices in
# CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`, else 1.
# EQUIRECON_RDZV_BACKEND=c10d (default) or static (fixed --node_rank, --master_addr/port).
# torchrun forwards PET_SIGNALS_TO_HANDLE (default here: TERM, INT, HUP, QUIT, USR1, USR2).
# NCCL_*, TORCH_*, MASTER_* and every other variable are passed through unchanged.
# EQUIRECON_DRY_RUN=1 prints the launch environment and the command instead of running it.
set -euo pipefail

VERBS=" data pretrain eval export report launch bench "

die() {
  echo "equirecon-entrypoint: error: $*" >&2
  exit 2
}

is_int() { [[ ${1:-} =~ ^[0-9]+$ ]]; }

# First host of a Slurm node list such as "gpu[003-005,010],cpu7" -> gpu003.
first_host() {
  local list=$1 first prefix inner
  if command -v scontrol >/dev/null 2>&1 && first=$(scontrol show hostnames "$list" 2>/dev/null | head -n 1) && [[ -n $first ]]; then
    echo "$first"
    return
  fi
  # Up to the first comma that is not inside brackets.
  first=${list%%,*}
  if [[ $first == *"["* && $first != *"]"* ]]; then
    first=${list%%]*}]
  fi
  if [[ $first == *"["* ]]; then
    prefix=${first%%\[*}
    inner=${first#*\[}
    inner=${inner%%]*}
    inner=${inner%%,*}
    inner=${inner%%-*}
    first=$prefix$inner
  fi
  [[ -n $first ]] || die "cannot read a host name from the Slurm node list '$list'"
  echo "$first"
}

gpus_per_node() {
  local n=${GPUS_PER_NODE:-${NPROC_PER_NODE:-}}
  if [[ -z $n && -n ${SLURM_GPUS_ON_NODE:-} ]]; then
    n=$SLURM_GPUS_ON_NODE
  fi
  if [[ -z $n && -n ${CUDA_VISIBLE_DEVICES:-} && ${CUDA_VISIBLE_DEVICES} != NoDevFiles ]]; then
    local devs
    IFS=, read -r -a devs <<<"$CUDA_VISIBLE_DEVICES"
    n=${#devs[@]}
  fi
  if [[ -z $n ]] && command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [[ $n == 0 ]] && n=
  fi
  n=${n:-1}
  if ! is_int "$n" || ((n == 0)); then
    die "GPUS_PER_NODE must be a positive integer, got '$n'"
  fi
  echo "$n"
}

slurm_step_nodes() { echo "${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}}"; }
slurm_step_tasks() { echo "${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:-1}}"; }
slurm_nodelist() { echo "${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}}"; }

slurm_master() {
  if [[ -z ${MASTER_ADDR:-} ]]; then
    local list
    list=$(slurm_nodelist)
    [[ -n $list ]] || die "under Slurm but no SLURM_STEP_NODELIST/SLURM_JOB_NODELIST: set MASTER_ADDR"
    MASTER_ADDR=$(first_host "$list")
  fi
  if [[ -z ${MASTER_PORT:-} ]]; then
    is_int "${SLURM_JOB_ID:-}" || die "SLURM_JOB_ID is not a number: set MASTER_PORT"
    MASTER_PORT=$((29500 + SLURM_JOB_ID % 1000))
  fi
  export MASTER_ADDR MASTER_PORT
}

torchrun_cmd() {  # nnodes node_rank nproc rdzv_id -- args after "equirecon"
  local nnodes=$1 node_rank=$2 nproc=$3 rdzv_id=$4
  shift 4
  CMD=(torchrun --nnodes="$nnodes" --nproc_per_node="$nproc")
  if [[ ${EQUIRECON_RDZV_BACKEND:-c10d} == static ]]; then
    CMD+=(--node_rank="$node_rank" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT")
  else
    # c10d assigns node ranks in rendezvous order; --node_rank is kept for the logs only.
    CMD+=(--node_rank="$node_rank" --rdzv_backend=c10d
      --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$rdzv_id")
  fi
  CMD+=(-m equirecon "$@")
  export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2}
}

pick_mode() {
  local mode=${EQUIRECON_LAUNCHER:-auto}
  if [[ $mode != auto ]]; then
    case $mode in node | task | torchrun | env | single) echo "$mode" ;; *)
      die "EQUIRECON_LAUNCHER must be auto, node, task, torchrun, env or single (got '$mode')" ;;
    esac
    return
  fi
  if [[ -n ${RANK:-} && -n ${WORLD_SIZE:-} ]]; then
    echo env
  elif [[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_PROCID:-} ]]; then
    if (($(slurm_step_tasks) == $(slurm_step_nodes))); then echo node; else echo task; fi
  elif [[ -n ${NNODES:-} || -n ${GPUS_PER_NODE:-} || -n ${NPROC_PER_NODE:-} ]]; then
    echo torchrun
  else
    echo single
  fi
}

(($# > 0)) || set -- equirecon --help
[[ $VERBS == *" $1 "* ]] && set -- equirecon "$@"

MODE=direct
CMD=("$@")
if [[ $1 == equirecon && ${2:-} == pretrain ]]; then
  shift
  MODE=$(pick_mode)
  case $MODE in
    env | single) CMD=(equirecon "$@") ;;
    node)
      slurm_master
      nproc=$(gpus_per_node)
      torchrun_cmd "$(slurm_step_nodes)" "${SLURM_NODEID:-0}" "$nproc" "${SLURM_JOB_ID:-none}" "$@"
      ;;
    task)
      slurm_master
      RANK=$SLURM_PROCID
      WORLD_SIZE=$(slurm_step_tasks)
      LOCAL_RANK=${SLURM_LOCALID:-0}
      export RANK WORLD_SIZE LOCAL_RANK
      LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-$((WORLD_SIZE / $(slurm_step_nodes)))}
      export LOCAL_WORLD_SIZE
      CMD=(equirecon "$@")
      ;;
    torchrun)
      nnodes=${NNODES:-1}
      is_int "$nnodes" || die "NNODES must be an integer, got '$nnodes'"
      if ((nnodes > 1)); then
        [[ -n ${MASTER_ADDR:-} ]] || die "NNODES=$nnodes needs MASTER_ADDR (the host of node 0)"
        [[ -n ${NODE_RANK:-} ]] || die "NNODES=$nnodes needs NODE_RANK (0 … $((nnodes - 1)))"
      fi
      MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
      MASTER_PORT=${MASTER_PORT:-29500}
      export MASTER_ADDR MASTER_PORT
      nproc=$(gpus_per_node)
      torchrun_cmd "$nnodes" "${NODE_RANK:-0}" "$nproc" "${RDZV_ID:-equirecon}" "$@"
      ;;
  esac
fi

if [[ ${EQUIRECON_DRY_RUN:-0} == 1 ]]; then
  echo "mode=$MODE"
  for v in MASTER_ADDR MASTER_PORT RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE PET_SIGNALS_TO_HANDLE; do
    [[ -n ${!v:-} ]] && echo "$v=${!v}"
  done
  while IFS= read -r v; do echo "$v=${!v}"; done < <(compgen -e | grep '^NCCL_' || true)
  printf 'exec'
  printf ' %q' "${CMD[@]}"
  printf '\n'
  exit 0
fi
exec "${CMD[@]}"

#!/usr/bin/env bash
# A real single-node Slurm on this machine, for tests and local tries of `equirecon launch slurm`.
#
#   bash launch/local_slurm.sh start    # install (root, Debian) + start munged, slurmctld, slurmd
#   bash launch/local_slurm.sh status   # sinfo, and the PIDs this script started
#   bash launch/local_slurm.sh stop     # let jobs finish (30 s, then scancel), stop the daemons
#                                       # this script started (by PID), nothing else
#
# What `start` does:
# - root and `slurmctld` missing: `apt-get install slurmctld slurmd slurm-client munge` (Debian 12:
#   Slurm 22.05; about 10 s);
# - writes /etc/slurm/slurm.conf unless one exists that this script did not write (a real
#   cluster's configuration is never touched): one node, `$(hostname)`, with the CPUs and memory
#   `slurmd -C` reports, partition `debug`, no accounting (submitit then logs harmless
#   "Bypassing sacct error" warnings and reports job states as UNKNOWN), no cgroup.conf;
# - starts each daemon that is not already running and records its PID in $STATE_DIR; a daemon
#   that was already running is used as is and `stop` leaves it alone;
# - waits until the node is idle (about 5 s).
# Exit status 2: Slurm is not installed and cannot be installed (not root / no apt-get).
# No systemd is needed (containers have none): the daemons are started directly.
set -euo pipefail

STATE_DIR=${EQUIRECON_SLURM_STATE:-/run/equirecon-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by equirecon launch/local_slurm.sh"
PARTITION=debug

log() { echo "local_slurm: $*" >&2; }

is_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

pid_from() { [[ -s "$1" ]] && tr -dc '0-9' <"$1" || true; }

install_packages() {
  if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
    && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    return 0
  fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "Slurm is not installed and this is not a root Debian/Ubuntu shell; install" \
      "slurmctld slurmd slurm-client munge (or point SLURM_CONF at a cluster) and retry"
    exit 2
  fi
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }; then
    log "apt-get could not install slurmctld slurmd slurm-client munge (offline mirror?)"
    exit 2
  fi
}

write_conf() {
  if [[ -f "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
    log "using the existing $CONF (not written by this script; left unchanged)"
    return 0
  fi
  local host node
  host=$(hostname)
  # `slurmd -C` prints this machine's node line (NodeName=… CPUs=… RealMemory=…) and UpTime.
  node=$(slurmd -C | grep '^NodeName=' | head -1)
  [[ -n "$node" ]] || { log "slurmd -C printed no NodeName line"; exit 1; }
  mkdir -p "$(dirname "$CONF")"
  cat >"$CONF" <<EOF
$MARKER (\`bash launch/local_slurm.sh stop\` stops the daemons)
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  log "wrote $CONF for node $host"
}

# start_daemon NAME PIDFILE CMD...: start CMD unless the PID in PIDFILE is alive; record ours.
start_daemon() {
  local name=$1 pidfile=$2
  shift 2
  local pid
  pid=$(pid_from "$pidfile")
  if is_alive "$pid"; then
    log "$name already running (pid $pid); not started by us, \`stop\` leaves it"
    return 0
  fi
  "$@"
  for _ in $(seq 50); do
    pid=$(pid_from "$pidfile")
    is_alive "$pid" && break
    sleep 0.1
  done
  if ! is_alive "$pid"; then
    log "$name did not start; see its log (/var/log/slurm/ or /var/log/munge/)"
    exit 1
  fi
  echo "$pid" >"$STATE_DIR/$name.pid"
  log "started $name (pid $pid)"
}

start() {
  install_packages
  mkdir -p "$STATE_DIR" /run/munge /var/log/munge /var/lib/munge /etc/munge \
    /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm
  [[ -s /etc/munge/munge.key ]] || { /usr/sbin/mungekey --create >/dev/null 2>&1 \
    && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key; }
  write_conf
  local fresh_ctld=
  is_alive "$(pid_from /run/slurm/slurmctld.pid)" || fresh_ctld=1
  start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
  # -i: keep the saved state (job ids go on increasing, so submitit's per-job folders never
  # collide with those of an earlier start) ...
  start_daemon slurmctld /run/slurm/slurmctld.pid /usr/sbin/slurmctld -i
  start_daemon slurmd /run/slurm/slurmd.pid /usr/sbin/slurmd
  if [[ -n "$fresh_ctld" ]]; then
    # ... but jobs recovered from it belong to daemons that are gone: cancel them.
    local stale
    stale=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n "$stale" ]]; then
      log "cancelling jobs left from an earlier start: $(echo "$stale" | tr '\n' ' ')"
      # shellcheck disable=SC2086 # one job id per word
      scancel --full $stale 2>/dev/null || true
    fi
  fi
  for _ in $(seq 120); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix)' && [[ -z "$(squeue -h -o %i -t R,CG)" ]]; then
      log "ready: $(sinfo -h -o '%P %D %t %c CPUs' | head -1)"
      return 0
    fi
    sleep 0.5
  done
  log "the node did not become idle: $(sinfo 2>&1 | tail -2)"
  exit 1
}

# Let the jobs finish (a job writes its results a few seconds before its processes are gone),
# then cancel what is left: stopping slurmd under a running job orphans its slurmstepd.
drain() {
  local jobs
  for _ in $(seq 60); do
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    [[ -z "$jobs" ]] && return 0
    sleep 0.5
  done
  log "cancelling the jobs still there: $(echo "$jobs" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one job id per word
  scancel --full $jobs 2>/dev/null || true
  for _ in $(seq 60); do
    [[ -z "$(squeue -h -o %i 2>/dev/null || true)" ]] && return 0
    sleep 0.5
  done
  log "jobs still listed after scancel: $(squeue -h -o '%i %T' 2>/dev/null | tr '\n' ' ')"
}

stop() {
  local name pid
  if is_alive "$(pid_from "$STATE_DIR/slurmd.pid")"; then
    drain
  fi
  for name in slurmd slurmctld munged; do
    [[ -f "$STATE_DIR/$name.pid" ]] || continue
    pid=$(pid_from "$STATE_DIR/$name.pid")
    if is_alive "$pid"; then
      kill -TERM "$pid"
      for _ in $(seq 50); do is_alive "$pid" || break; sleep 0.1; done
      is_alive "$pid" && kill -KILL "$pid"
      log "stopped $name (pid $pid)"
    fi
    rm -f "$STATE_DIR/$name.pid"
  done
}

status() {
  local name pid
  for name in munged slurmctld slurmd; do
    pid=$(pid_from "$STATE_DIR/$name.pid" 2>/dev/null)
    if is_alive "$pid"; then echo "$name: running (pid $pid, started by local_slurm.sh)"; fi
  done
  sinfo 2>&1 | head -5
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac

#!/usr/bin/env bash
# A private Docker engine for the container test (`make test`, .ci/run) on a machine without one.
#
#   docker/ci_engine.sh start   # install docker.io + debootstrap (root only, if missing), start
#                               # dockerd on a private socket, make the base image once; prints
#                               # the DOCKER_HOST to use
#   docker/ci_engine.sh stop    # stop the dockerd this script started (by its PID file)
#   docker/ci_engine.sh status  # is it up? which storage driver, which images
#   docker/ci_engine.sh host    # print DOCKER_HOST (unix://…/docker.sock)
#
# Everything lives under $EQUIRECON_DOCKER_DIR (default: <repo>/.cache/docker, gitignored):
# data-root (images and build cache survive stop/start, so the second `make test` reuses the
# image), exec-root, socket, pid file and log. No iptables, no bridge: builds and containers use
# --network host or --network none. Storage driver: overlay2 where the kernel mounts overlayfs,
# vfs otherwise (vfs copies every layer in full: several times the disk).
# The base image ($EQUIRECON_BASE_IMAGE, default equirecon/bookworm-py:local) is Debian bookworm
# minbase + python3 made with debootstrap and `docker import`, because there is no registry here.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${EQUIRECON_DOCKER_DIR:-$REPO/.cache/docker}
SOCK=$DIR/docker.sock
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
BASE_IMAGE=${EQUIRECON_BASE_IMAGE:-equirecon/bookworm-py:local}
DEBIAN_MIRROR=${EQUIRECON_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD=${DOCKERD:-dockerd}
export DOCKER_HOST=unix://$SOCK

log() { echo "[ci_engine] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

ensure_packages() {
  local missing=()
  command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  command -v "$DOCKERD" >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) != 0 ]]; then
    die "missing ${missing[*]} and not root: install them (apt-get install docker.io debootstrap) or set DOCKER_HOST to a running engine"
  fi
  log "installing ${missing[*]} (apt)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

overlay_works() {
  # overlay2 needs overlayfs mounts on the filesystem of the data-root; try one.
  local t
  t=$(mktemp -d "$DIR/.ovl.XXXXXX")
  mkdir -p "$t/l" "$t/u" "$t/w" "$t/m"
  if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
    umount "$t/m"
    rm -rf "$t"
    return 0
  fi
  rm -rf "$t"
  return 1
}

start_daemon() {
  mkdir -p "$DIR/data-root" "$DIR/exec-root"
  local driver=${EQUIRECON_DOCKER_STORAGE_DRIVER:-}
  if [[ -z $driver ]]; then
    # A data-root keeps the driver it was made with (images are stored per driver).
    if [[ -d $DIR/data-root/overlay2 ]]; then
      driver=overlay2
    elif [[ -d $DIR/data-root/vfs ]]; then
      driver=vfs
    elif [[ $(id -u) == 0 ]] && overlay_works; then
      driver=overlay2
    else
      driver=vfs
    fi
  fi
  log "starting dockerd (storage driver $driver, socket $SOCK, log $LOG)"
  # setsid: the daemon outlives this script (and make's recipe shell); stopped by `stop`.
  setsid "$DOCKERD" --iptables=false --ip6tables=false --bridge=none \
    --storage-driver="$driver" --data-root="$DIR/data-root" --exec-root="$DIR/exec-root" \
    -H "unix://$SOCK" -p "$PIDFILE" >"$LOG" 2>&1 </dev/null &
  local i
  for i in $(seq 1 60); do
    engine_up && {
      log "dockerd up after ${i}s"
      return 0
    }
    if ! kill -0 $! 2>/dev/null; then
      tail -n 20 "$LOG" >&2
      die "dockerd exited during start-up (log above, full log: $LOG)"
    fi
    sleep 1
  done
  tail -n 20 "$LOG" >&2
  die "dockerd did not answer on $SOCK within 60 s (log: $LOG)"
}

ensure_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  [[ $(id -u) == 0 ]] || die "base image $BASE_IMAGE is missing and making it (debootstrap) needs root"
  local rootfs=$DIR/rootfs-bookworm t0=$SECONDS
  rm -rf "$rootfs"
  log "making $BASE_IMAGE: debootstrap --variant=minbase bookworm (about 2 minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$DIR/debootstrap.log" 2>&1 ||
    die "debootstrap failed (log: $DIR/debootstrap.log)"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "made $BASE_IMAGE in $((SECONDS - t0)) s"
}

cmd_start() {
  if engine_up; then
    log "engine already up on $SOCK"
  else
    ensure_packages
    if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      die "dockerd (pid $(cat "$PIDFILE")) runs but does not answer on $SOCK; stop it first"
    fi
    start_daemon
    # Old image versions (untagged after a rebuild) would pile up in the data-root; no build can
    # be running on a daemon that was just started, so their layers are safe to remove.
    docker image prune -f >/dev/null || log "warning: docker image prune failed"
  fi
  ensure_base_image
  echo "$DOCKER_HOST"
}

cmd_stop() {
  if [[ ! -f $PIDFILE ]]; then
    log "no $PIDFILE: nothing to stop"
    return 0
  fi
  local pid i
  pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for i in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "dockerd $pid still running after 30 s; sending SIGKILL"
      kill -KILL "$pid"
    fi
    log "stopped dockerd $pid"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  if engine_up; then
    docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, root {{.DockerRootDir}}'
    docker image ls
    du -sh "$DIR/data-root" 2>/dev/null || true
  else
    echo "no engine on $SOCK"
    return 1
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  host) echo "$DOCKER_HOST" ;;
  *)
    echo "usage: $0 start|stop|status|host" >&2
    exit 2
    ;;
esac

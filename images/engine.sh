#!/usr/bin/env bash
# A Docker engine on this machine for images/build.sh --local, `semcode run --runner docker` and the
# container tests (make test-containers), where none runs and no systemd starts one (a CI or
# development machine), as root:
#
#   images/engine.sh start     # apt-get installs Debian's docker.io when dockerd is missing, then starts dockerd
#   images/engine.sh status    # exit 0 when an engine answers `docker info`
#   images/engine.sh stop      # stops the dockerd this script started
#
# dockerd runs with --iptables=false --bridge=none: it touches no firewall rule and makes no bridge, so
# containers use --network host or --network none (the build, semcode run and the tests ask for those).
# DOCKER_DATA_ROOT (default /var/lib/docker) holds images and layers: keep it out of the repository.
# The engine's log and pid file go to DOCKER_EXEC_ROOT (default /run/semcode-docker).
set -euo pipefail

data_root="${DOCKER_DATA_ROOT:-/var/lib/docker}"
exec_root="${DOCKER_EXEC_ROOT:-/run/semcode-docker}"
pid_file="${exec_root}/dockerd.pid"
log_file="${exec_root}/dockerd.log"

die() {
  echo "engine.sh: $*" >&2
  exit 2
}

answers() {
  docker info >/dev/null 2>&1
}

start() {
  if answers; then
    echo "engine.sh: a Docker engine answers already" >&2
    return
  fi
  [[ "$(id -u)" == 0 ]] || die "starting dockerd needs root"
  if ! command -v dockerd >/dev/null; then
    echo "engine.sh: installing Debian's docker.io" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  mkdir -p "${data_root}" "${exec_root}"
  dockerd --iptables=false --bridge=none --data-root "${data_root}" --exec-root "${exec_root}/exec" \
    --pidfile "${pid_file}" >"${log_file}" 2>&1 &
  for _ in $(seq 60); do
    if answers; then
      echo "engine.sh: dockerd $(docker version --format '{{.Server.Version}}') up (data root ${data_root}, log ${log_file})" >&2
      return
    fi
    sleep 0.5
  done
  die "dockerd did not answer within 30 s: see ${log_file}"
}

stop() {
  if [[ ! -f "${pid_file}" ]]; then
    echo "engine.sh: no dockerd started by this script (${pid_file})" >&2
    return
  fi
  local pid
  pid="$(cat "${pid_file}")"
  kill "${pid}" 2>/dev/null || true
  for _ in $(seq 60); do
    if ! kill -0 "${pid}" 2>/dev/null; then
      echo "engine.sh: dockerd ${pid} stopped" >&2
      return
    fi
    sleep 0.5
  done
  die "dockerd ${pid} still runs after 30 s"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  *) die "usage: images/engine.sh start|stop|status" ;;
esac

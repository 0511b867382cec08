#!/usr/bin/env bash
# Make this machine's Docker daemon pull Docker Hub images through registry-proxy.
#
#   use-registry-mirror.sh https://registry.build.example.com
#   REGISTRY_MIRROR=https://registry.build.example.com use-registry-mirror.sh
#
# 1. waits until dockerd answers (CodeBuild starts it in the background as the build begins);
# 2. merges the mirror into /etc/docker/daemon.json, first in "registry-mirrors", keeping every
#    other setting and mirror;
# 3. sends dockerd SIGHUP, which reloads registry-mirrors without a restart;
# 4. checks that `docker info` lists the mirror;
# 5. checks that the mirror answers /v2/. dockerd silently falls back to Docker Hub when a
#    mirror fails, so an unreachable proxy would otherwise only show up as rate limits later.
#
# Settings (environment):
#   REGISTRY_MIRROR       mirror URL, https://HOST[:PORT], when not given as the argument
#   MIRROR_CHECK          required (default): fail if the mirror does not answer;
#                         warn: report it and carry on; skip: do not ask the mirror
#   MIRROR_CA_FILE        PEM file of a private CA that signed the proxy's certificate
#   MIRROR_WAIT_SECONDS   how long to wait for dockerd and for the reload (default 60)
#   DOCKER_DAEMON_CONFIG  daemon configuration file (default /etc/docker/daemon.json)
#   DOCKER_CERTS_DIR      per-registry certificates (default /etc/docker/certs.d)
#   DOCKERD_PIDFILE       dockerd's pid file (default /var/run/docker.pid)
set -euo pipefail

log() { printf 'use-registry-mirror: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

mirror="${1:-${REGISTRY_MIRROR:-}}"
mirror="${mirror%/}"
config="${DOCKER_DAEMON_CONFIG:-/etc/docker/daemon.json}"
certs_dir="${DOCKER_CERTS_DIR:-/etc/docker/certs.d}"
pidfile="${DOCKERD_PIDFILE:-/var/run/docker.pid}"
wait_seconds="${MIRROR_WAIT_SECONDS:-60}"
check="${MIRROR_CHECK:-required}"
ca_file="${MIRROR_CA_FILE:-}"

[[ -n "$mirror" ]] || die "give the mirror URL as the argument or in REGISTRY_MIRROR"
if [[ ! "$mirror" =~ ^https://([A-Za-z0-9.-]+(:[0-9]+)?)$ ]]; then
  die "expected https://HOST[:PORT] without a path, got '$mirror' (mirrors need HTTPS)"
fi
host="${BASH_REMATCH[1]}"
case "$check" in
  required | warn | skip) ;;
  *) die "MIRROR_CHECK must be required, warn or skip, not '$check'" ;;
esac
for tool in docker jq; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
[[ -z "$ca_file" || -r "$ca_file" ]] || die "MIRROR_CA_FILE '$ca_file' cannot be read"

# 1. dockerd must be up before it can be reloaded
deadline=$((SECONDS + wait_seconds))
until docker info >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "dockerd did not answer within ${wait_seconds}s (privileged mode off?)"
  sleep 1
done

# A private CA: dockerd reads /etc/docker/certs.d/HOST/ca.crt for that registry host.
if [[ -n "$ca_file" ]]; then
  mkdir -p "$certs_dir/$host"
  cp "$ca_file" "$certs_dir/$host/ca.crt"
fi

# 2. merge into daemon.json, atomically (a half-written file would stop dockerd's next start)
mkdir -p "$(dirname "$config")"
current='{}'
if [[ -s "$config" ]]; then
  current="$(<"$config")"
fi
tmp="$(mktemp "$config.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
jq --arg mirror "$mirror" '
  ((.["registry-mirrors"] // []) | map(rtrimstr("/"))) as $known
  | .["registry-mirrors"] = [$mirror] + ($known - [$mirror])
' <<<"$current" >"$tmp" || die "$config does not hold a JSON object"
chmod 0644 "$tmp"
mv "$tmp" "$config"

# 3. reload: SIGHUP makes dockerd re-read daemon.json; running containers are not touched
if [[ -e "$pidfile" ]]; then
  pid="$(<"$pidfile")"
else
  pid="$(pgrep -o -x dockerd || true)"
fi
if [[ ! "$pid" =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
  die "no running dockerd found (pid file: $pidfile)"
fi
kill -HUP "$pid"

# 4. the daemon lists the mirror (docker info prints it with a trailing slash)
deadline=$((SECONDS + wait_seconds))
while :; do
  listed="$(docker info --format '{{range .RegistryConfig.Mirrors}}{{println .}}{{end}}' 2>/dev/null || true)"
  if grep -qxF "$mirror/" <<<"$listed" || grep -qxF "$mirror" <<<"$listed"; then
    break
  fi
  ((SECONDS < deadline)) || die "docker info does not list $mirror after the reload; see dockerd's log"
  sleep 0.5
done
log "dockerd pulls Docker Hub images through $mirror"

# 5. the mirror answers: 200, or 401 when it asks for credentials
if [[ "$check" != skip ]]; then
  curl_args=(--silent --show-error --output /dev/null --write-out '%{http_code}' --max-time 15)
  if [[ -n "$ca_file" ]]; then
    curl_args+=(--cacert "$ca_file")
  fi
  status="$(curl "${curl_args[@]}" "$mirror/v2/" || true)"
  if [[ "$status" == 200 || "$status" == 401 ]]; then
    log "mirror answers /v2/ with HTTP $status"
  else
    message="$mirror/v2/ answered '${status:-nothing}': dockerd would fall back to Docker Hub"
    if [[ "$check" == warn ]]; then
      log "warning: $message"
    else
      die "$message (set MIRROR_CHECK=warn to carry on anyway)"
    fi
  fi
fi

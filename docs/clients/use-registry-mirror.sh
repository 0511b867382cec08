#!/usr/bin/env bash
# Make this machine's Docker daemon pull Docker Hub images through registry-proxy, and prove it.
#
#   use-registry-mirror.sh https://registry.build.example.com
#   REGISTRY_MIRROR=https://registry.build.example.com use-registry-mirror.sh
#
# 1. waits until dockerd answers (CodeBuild starts it in the background as the build begins);
# 2. installs the proxy's files for dockerd and BuildKit under /etc/docker/certs.d/HOST/: the
#    client certificate the load balancer asks for (MIRROR_CLIENT_CERT / MIRROR_CLIENT_KEY), and
#    a private CA (MIRROR_CA_FILE); and writes a buildkitd.toml for buildx builders of the
#    docker-container driver with the same mirror and files;
# 3. merges the mirror into /etc/docker/daemon.json, first in "registry-mirrors", keeping every
#    other setting and mirror;
# 4. restarts dockerd with the command line and environment it was started with, so that it
#    reads the merged daemon.json (MIRROR_RELOAD=restart, the default: dockerd 20.10's built-in
#    BuildKit keeps the mirrors it started with, whatever SIGHUP reloads), and waits until
#    `docker info` lists the mirror;
# 5. proves it (MIRROR_CHECK): pulls registry-proxy/probe:<random tag> with `docker pull` and
#    builds FROM registry-proxy/probe:<another random tag> with BuildKit. No registry but the proxy
#    has that repository (a Docker Hub namespace cannot contain "-"): both succeed only if dockerd
#    and its BuildKit really pull through the mirror. Costs no Docker Hub pull and a second or two.
#    dockerd silently falls back to Docker Hub when a mirror fails, so without this a broken set-up
#    would only show up later, as rate limits.
#
# Settings (environment):
#   REGISTRY_MIRROR       mirror URL, https://HOST[:PORT], when not given as the argument
#   MIRROR_CHECK          required (default): fail unless both probes pass; warn: report it and
#                         carry on; skip: no probe
#   MIRROR_RELOAD         restart (default): restart dockerd; hup: only send SIGHUP (keeps running
#                         containers, but dockerd 20.10's BuildKit keeps using Docker Hub)
#   MIRROR_CLIENT_CERT    client certificate (PEM text) for a proxy behind mutual TLS
#   MIRROR_CLIENT_KEY     its private key (PEM text); both come from Secrets Manager in CodeBuild
#   MIRROR_CA_FILE        PEM file of a private CA that signed the proxy's certificate
#   MIRROR_WAIT_SECONDS   how long to wait for dockerd, its restart and each probe (default 60)
#   MIRROR_BUILDKITD_CONFIG  buildkitd.toml to write for docker-container builders (default
#                         buildx's default file, $BUILDX_CONFIG or ~/.docker/buildx, then
#                         buildkitd.default.toml); "none": do not write one
#   DOCKER_DAEMON_CONFIG  daemon configuration file (default /etc/docker/daemon.json)
#   DOCKER_CERTS_DIR      per-registry certificates (default /etc/docker/certs.d)
#   DOCKERD_PIDFILE       dockerd's pid file (default /var/run/docker.pid)
#   DOCKERD_LOG           where a restarted dockerd writes (default: where the old one wrote, if
#                         that was a file, else /var/log/docker.log)
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
reload="${MIRROR_RELOAD:-restart}"
ca_file="${MIRROR_CA_FILE:-}"
client_cert="${MIRROR_CLIENT_CERT:-}"
client_key="${MIRROR_CLIENT_KEY:-}"
buildx_dir="${BUILDX_CONFIG:-${DOCKER_CONFIG:-${HOME:-/root}/.docker}/buildx}"
buildkitd_config="${MIRROR_BUILDKITD_CONFIG:-$buildx_dir/buildkitd.default.toml}"
probe_repository="registry-proxy/probe"

[[ -n "$mirror" ]] || die "give the mirror URL as the argument or in REGISTRY_MIRROR"
if [[ ! "$mirror" =~ ^https://([A-Za-z0-9.-]+(:[0-9]+)?)$ ]]; then
  die "expected https://HOST[:PORT] without a path, got '$mirror' (mirrors need HTTPS)"
fi
host="${BASH_REMATCH[1]}"
case "$check" in
  required | warn | skip) ;;
  *) die "MIRROR_CHECK must be required, warn or skip, not '$check'" ;;
esac
case "$reload" in
  restart | hup) ;;
  *) die "MIRROR_RELOAD must be restart or hup, not '$reload'" ;;
esac
[[ "$wait_seconds" =~ ^[1-9][0-9]*$ ]] || die "MIRROR_WAIT_SECONDS must be a whole number of seconds, not '$wait_seconds'"
for tool in docker jq curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
[[ -z "$ca_file" || -r "$ca_file" ]] || die "MIRROR_CA_FILE '$ca_file' cannot be read"
if [[ -n "$client_cert" || -n "$client_key" ]]; then
  [[ "$client_cert" == *"-----BEGIN CERTIFICATE-----"* ]] ||
    die "MIRROR_CLIENT_CERT must hold a PEM certificate (-----BEGIN CERTIFICATE-----)"
  [[ "$client_key" == *"-----BEGIN"*"PRIVATE KEY-----"* ]] ||
    die "MIRROR_CLIENT_KEY must hold a PEM private key (-----BEGIN ... PRIVATE KEY-----)"
fi

# 1. dockerd must be up before it can be reloaded
wait_until() { # wait_until COMMAND...: run COMMAND every half second until it succeeds
  local deadline=$((SECONDS + wait_seconds))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}
docker_answers() { docker info >/dev/null 2>&1; }
wait_until docker_answers ||
  die "dockerd did not answer within ${wait_seconds}s (privileged mode off?)"

# 2. the proxy's files: dockerd reads /etc/docker/certs.d/HOST/ for that registry host (ca.crt,
# client.cert, client.key), for pulls and for its built-in BuildKit alike
host_certs="$certs_dir/$host"
curl_tls=()
if [[ -n "$ca_file" ]]; then
  mkdir -p "$host_certs"
  cp "$ca_file" "$host_certs/ca.crt"
  curl_tls+=(--cacert "$host_certs/ca.crt")
fi
if [[ -n "$client_cert" ]]; then
  mkdir -p "$host_certs"
  (
    umask 077
    printf '%s\n' "$client_key" >"$host_certs/client.key"
  )
  printf '%s\n' "$client_cert" >"$host_certs/client.cert"
  curl_tls+=(--cert "$host_certs/client.cert" --key "$host_certs/client.key")
  log "client certificate installed in $host_certs"
fi
# buildx builders of the docker-container driver read neither daemon.json nor certs.d: `docker
# buildx create` copies this file, and the files it names, into the builder it creates
if [[ "$buildkitd_config" != none ]]; then
  mkdir -p "$(dirname "$buildkitd_config")"
  {
    printf '# written by use-registry-mirror.sh\n[registry."docker.io"]\n  mirrors = ["%s"]\n' "$host"
    if [[ -n "$ca_file" || -n "$client_cert" ]]; then
      printf '\n[registry."%s"]\n' "$host"
      [[ -z "$ca_file" ]] || printf '  ca = ["%s"]\n' "$host_certs/ca.crt"
      if [[ -n "$client_cert" ]]; then
        printf '  [[registry."%s".keypair]]\n' "$host"
        printf '    key = "%s"\n    cert = "%s"\n' "$host_certs/client.key" "$host_certs/client.cert"
      fi
    fi
  } >"$buildkitd_config"
fi

# 3. merge into daemon.json, atomically (a half-written file would stop dockerd's next start)
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

# 4. restart (or reload) dockerd
if [[ -e "$pidfile" ]]; then
  pid="$(<"$pidfile")"
else
  pid="$(pgrep -o -x dockerd || true)"
fi
if [[ ! "$pid" =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
  die "no running dockerd found (pid file: $pidfile)"
fi
gone() { # the process has exited (a zombie waiting for its parent counts as gone)
  local state
  state="$(awk '$1 == "State:" {print $2}' "/proc/$1/status" 2>/dev/null || true)"
  [[ -z "$state" || "$state" == Z ]]
}
if [[ "$reload" == hup ]]; then
  kill -HUP "$pid"
else
  # the command line and environment it was started with (CodeBuild's entry point:
  # dockerd --host=unix:///var/run/docker.sock --host=tcp://127.0.0.1:2375 --storage-driver=overlay2)
  mapfile -d '' -t command_line <"/proc/$pid/cmdline"
  mapfile -d '' -t environment <"/proc/$pid/environ"
  program="$(readlink "/proc/$pid/exe")"
  workdir="$(readlink "/proc/$pid/cwd" || echo /)"
  for argument in "${command_line[@]}"; do
    [[ "$argument" != --registry-mirror* ]] ||
      die "dockerd was started with $argument; daemon.json's registry-mirrors would conflict with it"
  done
  daemon_log="${DOCKERD_LOG:-}"
  if [[ -z "$daemon_log" ]]; then
    daemon_log="$(readlink "/proc/$pid/fd/2" || true)"
    [[ -f "$daemon_log" ]] || daemon_log=/var/log/docker.log
  fi
  kill -TERM "$pid"
  wait_until gone "$pid" ||
    die "dockerd (pid $pid) did not stop within ${wait_seconds}s"
  (
    cd "$workdir"
    exec setsid env -i "${environment[@]}" "$program" "${command_line[@]:1}" \
      </dev/null >>"$daemon_log" 2>&1
  ) &
  log "dockerd restarted: ${command_line[*]}"
fi

# dockerd lists the mirror (docker info prints it with a trailing slash)
lists_mirror() {
  local listed
  listed="$(docker info --format '{{range .RegistryConfig.Mirrors}}{{println .}}{{end}}' 2>/dev/null)" &&
    { grep -qxF "$mirror/" <<<"$listed" || grep -qxF "$mirror" <<<"$listed"; }
}
wait_until lists_mirror ||
  die "docker info does not list $mirror after the $reload; see dockerd's log"
log "dockerd lists $mirror as its Docker Hub mirror"

# 5. the proof: a docker pull and a BuildKit build of an image only the proxy has
[[ "$check" != skip ]] || exit 0
failed() {
  if [[ "$check" == warn ]]; then
    log "warning: $*"
    exit 0
  fi
  die "$* (set MIRROR_CHECK=warn to carry on anyway)"
}
nonce="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
pulled="$probe_repository:pull-$nonce"
built="$probe_repository:build-$nonce"

# the proxy answers for the probe over the same TLS path (network, name, certificates); on a
# failure, curl's own line ("curl: (60) SSL certificate problem: ...") says why, not the advice
# some errors add after it
accept='application/vnd.oci.image.index.v1+json'
headers="$(curl --silent --show-error --head --max-time "$wait_seconds" "${curl_tls[@]}" \
  --header "Accept: $accept" "$mirror/v2/$probe_repository/manifests/$nonce" 2>&1)" ||
  failed "cannot reach $mirror: $(grep -m 1 '^curl: (' <<<"$headers" || tail -n 1 <<<"$headers")"
expected="$(tr -d '\r' <<<"$headers" | awk 'tolower($1) == "docker-content-digest:" {print $2}')"
[[ "$expected" == sha256:* ]] ||
  failed "$mirror does not serve $probe_repository (is it registry-proxy? it answered: $(head -n 1 <<<"$headers"))"

if ! output="$(timeout "$wait_seconds" docker pull --quiet "$pulled" 2>&1)"; then
  failed "dockerd did not pull $pulled through $mirror: Docker Hub pulls would bypass the proxy: $output"
fi
digests="$(docker image inspect --format '{{join .RepoDigests " "}}' "$pulled")"
docker image rm "$pulled" >/dev/null 2>&1 || true
[[ " $digests " == *"@$expected "* ]] ||
  failed "dockerd pulled $pulled with digest(s) '$digests', the mirror serves $expected"
log "docker pull goes through $mirror"

if ! output="$(printf 'FROM %s\n' "$built" |
  DOCKER_BUILDKIT=1 timeout "$wait_seconds" docker build --quiet - 2>&1)"; then
  failed "BuildKit did not resolve $built through $mirror: BuildKit builds would pull from Docker Hub: ${output: -600}"
fi
image="$(tail -n 1 <<<"$output")"
[[ "$image" != sha256:* ]] || docker image rm "$image" >/dev/null 2>&1 || true
log "BuildKit builds go through $mirror"

#!/usr/bin/env bash
# The deploy part of CI (.ci/run calls it after dotnet test). Eleven checks, each counted as one test:
#
#   static (Node 20 + npm; tests/deploy):
#     1. manifests         deploy/k8s/*.yaml: kubernetes-models validate(), unknown fields, cross-object rules
#     2. lint              deploy/Containerfile and Containerfile.cuda with dockerfilelint
#     3. self-test         the checker reports each of a set of deliberate breakages
#   container (root, podman from Debian packages, no registry):
#     4. base image        localdebian:12 from `debootstrap --variant=minbase --include=libssl3 bookworm`
#                          (reused when podman already has it with libssl)
#     5. image             deploy/build-image.sh: self-contained publish + podman build of deploy/Containerfile
#     6. ready             the image started as the Deployment runs it (its args, its ConfigMap mounted at
#                          /etc/featureflow, read-only root, uid 10001, all capabilities dropped, /data a tmpfs)
#                          answers /readyz 200
#     7. grpc health       grpc.health.v1.Health/Check on the gRPC port says SERVING (what the startupProbe asks)
#     8. models            GET /v1/models lists stories260k
#     9. steered           POST /v1/completions with a pack steering term returns choices[0].text
#    10. experiment        POST /v1/completions in the ConfigMap's experiment returns choices[0].text (SQLite in /data)
#    11. sigterm           podman stop (SIGTERM) ends the server with exit status 0 within the grace period
#
# Requests carry `authorization: Bearer ci-deploy-check-key-0001`; the container gets it in FEATUREFLOW_API_KEYS; the probes'
# endpoints (/readyz, gRPC health) are called WITHOUT a key, as the kubelet calls them.
#
#   deploy/ci/deploy-checks.sh [COUNTS_FILE]      writes "passed=N failed=N skipped=N" there
#
# FEATUREFLOW_DEPLOY_CHECKS=all (default) | static (checks 4-11 skipped) | off (nothing runs, nothing counted).
# Exit status: 0 when nothing failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

counts_file="${1:-$root/artifacts/deploy/checks.env}"
mode="${FEATUREFLOW_DEPLOY_CHECKS:-all}"
work="$root/artifacts/deploy"
logs="$work/logs"
mkdir -p "$logs" "$(dirname "$counts_file")"
rm -f "$counts_file"

passed=0 failed=0 skipped=0
start=$SECONDS
step_start=$SECONDS
say() { printf '[deploy %4ss] %s\n' "$((SECONDS - start))" "$*"; }
step() { step_start=$SECONDS; say "-- $*"; }
pass() { passed=$((passed + 1)); say "PASS $1 ($((SECONDS - step_start)) s)"; }
fail() { failed=$((failed + 1)); say "FAIL $1${2:+: $2}"; }
skip() { skipped=$((skipped + 1)); say "SKIP $1${2:+: $2}"; }
show_log() { say "   last lines of $1:"; tail -n "${2:-25}" "$1" | sed 's/^/      /'; }
finish() {
  echo "passed=$passed failed=$failed skipped=$skipped" > "$counts_file"
  say "deploy checks: $passed passed, $failed failed, $skipped skipped in $((SECONDS - start)) s"
  [ "$failed" -eq 0 ]
  exit $?
}

if [ "$mode" = off ]; then say "FEATUREFLOW_DEPLOY_CHECKS=off: deploy checks not run"; finish; fi
case "$mode" in all|static) ;; *) say "FEATUREFLOW_DEPLOY_CHECKS must be all, static or off, got '$mode'"; fail "configuration"; finish ;; esac

# ---- static ------------------------------------------------------------------------------------------------------
step "npm ci in tests/deploy (kubernetes-models, yaml, dockerfilelint; from package-lock.json)"
if command -v node >/dev/null && (cd tests/deploy && npm ci --no-audit --no-fund --loglevel=error) > "$logs/npm-ci.log" 2>&1; then
  say "   node $(node --version), $(cd tests/deploy && node -p 'Object.entries(require("./package.json").dependencies).map(([k,v])=>k+"@"+v).join(", ")')"
  for check in manifests lint self-test; do
    step "node tests/deploy/check.mjs $check"
    if node tests/deploy/check.mjs "$check" > "$logs/check-$check.log" 2>&1; then
      sed 's/^/   /' "$logs/check-$check.log" | grep -v '^   *ok ' ; pass "$check"
    else
      sed 's/^/   /' "$logs/check-$check.log"; fail "$check"
    fi
  done
else
  [ -f "$logs/npm-ci.log" ] && show_log "$logs/npm-ci.log"
  for check in manifests lint self-test; do fail "$check" "node/npm ci unavailable"; done
fi

container_checks=("base image" image ready "grpc health" models steered experiment sigterm)
not_run() { # marks the remaining container checks, from index $1, as failed (or skipped) with reason $2
  local i
  for ((i = $1; i < ${#container_checks[@]}; i++)); do
    if [ "${3:-fail}" = skip ]; then skip "${container_checks[$i]}" "$2"; else fail "${container_checks[$i]}" "not run: $2"; fi
  done
}
if [ "$mode" = static ]; then not_run 0 "FEATUREFLOW_DEPLOY_CHECKS=static" skip; finish; fi

# ---- container ---------------------------------------------------------------------------------------------------
image=localhost/featureflow:ci
base=localdebian:12
name="featureflow-ci-$$"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/featureflow-deploy.XXXXXX")"
cid="" rootfs_rm=""
cleanup() {
  set +e
  if [ -n "$rootfs_rm" ]; then wait "$rootfs_rm"; fi
  if [ -n "$cid" ]; then podman rm -f -t 0 "$cid" >/dev/null 2>&1; fi
  if command -v podman >/dev/null && podman image exists "$image" 2>/dev/null; then podman rmi -f "$image" >/dev/null 2>&1; fi
  rm -rf "$tmp" "$work/publish" "$work/context-cpu"
  if [ -d /var/lib/containers ]; then say "   /var/lib/containers now $(du -sh /var/lib/containers 2>/dev/null | cut -f1) (kept: $base)"; fi
}
trap cleanup EXIT

# The two settings this sandbox needs (runc; explicit ulimits, since the default raise of RLIMIT_NOFILE is refused),
# given to podman through CONTAINERS_CONF rather than by editing /etc/containers/containers.conf.
cat > "$tmp/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$tmp/containers.conf"

# The Debian mirror apt uses: the first URI of an enabled deb822 stanza (or one-line entry) for suite bookworm.
debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'BEGIN { RS = ""; FS = "\n" }
    { types = suites = uris = ""; enabled = 1
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^Types:/) types = $i; else if ($i ~ /^Suites:/) suites = $i; else if ($i ~ /^URIs:/) uris = $i
        else if ($i ~ /^Enabled:[ \t]*no/) enabled = 0 }
      if (enabled && types ~ /[ \t]deb([ \t]|$)/ && suites ~ /[ \t]bookworm([ \t]|$)/) { sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit } }')
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" { n = 2; if ($2 ~ /^\[/) { while ($n !~ /\]$/) n++; n++ } if ($(n + 1) == "bookworm") { print $n; exit } }')
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

step "container tooling: podman, debootstrap, runc (apt-get when missing)"
missing=()
for tool in podman debootstrap runc curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    fail "base image" "missing ${missing[*]} and not root (apt-get needs root)"; not_run 1 "no container tooling"; finish
  fi
  say "   installing (missing: ${missing[*]}): apt-get update; apt-get install podman buildah debootstrap runc uidmap slirp4netns fuse-overlayfs curl"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap runc uidmap slirp4netns fuse-overlayfs curl; } > "$logs/apt.log" 2>&1; then
    show_log "$logs/apt.log"; fail "base image" "apt-get install failed"; not_run 1 "no container tooling"; finish
  fi
fi
say "   $(podman --version), runc $(runc --version | head -n 1 | awk '{print $3}')"

step "base image $base"
if podman image exists "$base" && podman run --rm --network none "$base" test -e /usr/lib/x86_64-linux-gnu/libssl.so.3 > "$logs/base.log" 2>&1; then
  say "   reusing podman's $base (has libssl.so.3)"
  pass "base image"
else
  mirror=$(debian_mirror)
  say "   debootstrap --variant=minbase --include=libssl3 bookworm ROOT $mirror; tar | podman import - $base"
  if debootstrap --variant=minbase --include=libssl3 bookworm "$tmp/rootfs" "$mirror" > "$logs/base.log" 2>&1 \
     && tar -C "$tmp/rootfs" -c . | podman import - "$base" >> "$logs/base.log" 2>&1; then
    pass "base image"
  else
    show_log "$logs/base.log"; fail "base image" "debootstrap or import failed"; not_run 1 "no base image"; finish
  fi
  rm -rf "$tmp/rootfs" & rootfs_rm=$!   # ~200 MB of small files: removed while the image builds
fi

step "image $image: deploy/build-image.sh --base $base (dotnet publish, podman build)"
if deploy/build-image.sh --base "$base" --tag "$image" -- --layers=false > "$logs/build-image.log" 2>&1; then
  grep -E '^build-image.sh:' "$logs/build-image.log" | sed 's/^/   /'
  say "   image size $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
  pass image
else
  show_log "$logs/build-image.log" 40; fail image "deploy/build-image.sh failed"; not_run 2 "no image"; finish
fi

step "run $image as the Deployment does"
mapfile -t args < <(node tests/deploy/check.mjs print-args)
if [ ${#args[@]} -eq 0 ]; then fail ready "no container args from deploy/k8s/deployment.yaml"; not_run 3 "no args"; finish; fi
arg() { local i; for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "$1" ] && { echo "${args[$((i + 1))]}"; return; }; done; echo "$2"; }
http_port=$(arg --http-port 8080)
grpc_port=$(arg --port 50051)
mkdir -p "$tmp/config"
node tests/deploy/check.mjs print-config featureflow-config experiments.yaml > "$tmp/config/experiments.yaml"
chmod -R a+rX "$tmp/config"
grace=$(node tests/deploy/check.mjs print-grace)
say "   args: ${args[*]}"
# --read-only also mounts tmpfs on /tmp, /var/tmp and /run (the emptyDir at /tmp in the Deployment); /data is a tmpfs
# owned by the container user (U), as the emptyDir with fsGroup 10001 is.
run=(podman run -d --name "$name" --no-healthcheck
  --read-only --tmpfs /data:rw,U,size=64m
  --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges
  -e FEATUREFLOW_API_KEYS=ci-deploy-check-key-0001
  -v "$tmp/config:/etc/featureflow:ro"
  -p "127.0.0.1::$http_port" -p "127.0.0.1::$grpc_port"
  "$image" "${args[@]}")
if ! cid=$("${run[@]}" 2> "$logs/run.log"); then
  cid=""; show_log "$logs/run.log"; fail ready "podman run failed"; not_run 3 "container did not start"; finish
fi
host_http=$(podman port "$cid" "$http_port/tcp" | head -n 1)
host_grpc=$(podman port "$cid" "$grpc_port/tcp" | head -n 1)
say "   container ${cid:0:12}: HTTP $host_http, gRPC $host_grpc"
ready=0
for _ in $(seq 1 120); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$host_http/readyz")" = 200 ]; then ready=1; break; fi
  [ "$(podman inspect --format '{{.State.Running}}' "$cid" 2>/dev/null)" = true ] || break
  sleep 0.5
done
podman logs "$cid" > "$logs/container.log" 2>&1
if [ "$ready" -eq 1 ]; then
  pass ready
else
  show_log "$logs/container.log" 40; fail ready "no /readyz 200 within 60 s (state: $(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$cid"))"
  not_run 3 "server not ready"; finish
fi

auth=(-H "authorization: Bearer ci-deploy-check-key-0001")
has_text='let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);const t=j.choices&&j.choices[0]&&j.choices[0].text;if(typeof t!=="string"||t.length===0){console.error("no choices[0].text in "+s);process.exit(1)}console.log("   choices[0].text: "+JSON.stringify(t))})'

step "gRPC health on $host_grpc (no key, as the kubelet's grpc probe)"
printf '\0\0\0\0\0' > "$tmp/health-request"   # an uncompressed, empty HealthCheckRequest frame
reply=$(curl -sS --max-time 5 --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
  --data-binary @"$tmp/health-request" "http://$host_grpc/grpc.health.v1.Health/Check" 2>&1 | od -An -tx1 | tr -d ' \n')
# 00 00000002 0801: a 2-byte HealthCheckResponse with status = 1 (SERVING).
if [ "$reply" = 00000000020801 ]; then pass "grpc health"; else fail "grpc health" "reply bytes '$reply'"; fi

step "GET /v1/models"
if curl -sS --fail-with-body --max-time 10 "${auth[@]}" "http://$host_http/v1/models" > "$tmp/models.json" 2>&1 \
   && grep -q '"stories260k"' "$tmp/models.json"; then pass models; else fail models "$(head -c 300 "$tmp/models.json")"; fi

step "POST /v1/completions steered by pack happy"
body='{"prompt":"Once upon a time","max_tokens":20,"seed":1,"steering":{"terms":[{"pack":{"name":"happy","strength":1}}]}}'
if curl -sS --fail-with-body --max-time 30 "${auth[@]}" -H 'content-type: application/json' -d "$body" \
     "http://$host_http/v1/completions" > "$tmp/steered.json" 2>&1 && node -e "$has_text" < "$tmp/steered.json"; then
  pass steered
else fail steered "$(head -c 300 "$tmp/steered.json")"; fi

step "POST /v1/completions in experiment happy-strength (figures in /data/experiments.db)"
body='{"prompt":"Once upon a time","max_tokens":10,"seed":1,"experiment":"happy-strength","user":"ci-subject-1"}'
if curl -sS --fail-with-body --max-time 30 "${auth[@]}" -H 'content-type: application/json' -d "$body" \
     "http://$host_http/v1/completions" > "$tmp/experiment.json" 2>&1 && node -e "$has_text" < "$tmp/experiment.json"; then
  pass experiment
else fail experiment "$(head -c 300 "$tmp/experiment.json")"; fi

step "SIGTERM: podman stop --time $grace (the pod's terminationGracePeriodSeconds)"
podman stop --time "$grace" "$cid" > /dev/null 2>&1
podman logs "$cid" > "$logs/container.log" 2>&1
code=$(podman inspect --format '{{.State.ExitCode}}' "$cid" 2>/dev/null)
if [ "$code" = 0 ]; then pass sigterm; else show_log "$logs/container.log"; fail sigterm "exit status '$code' after $((SECONDS - step_start)) s"; fi
if grep -qiE 'warn|fail|error|exception' "$logs/container.log"; then
  say "   warnings in the container log ($logs/container.log):"; grep -iE 'warn|fail|error|exception' "$logs/container.log" | head -n 10 | sed 's/^/      /'
fi

finish

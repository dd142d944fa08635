#!/usr/bin/env bash
# Builds the featureflow server image from a self-contained publish (no SDK image, no multi-stage build).
#
#   deploy/build-image.sh [--flavor cpu|cuda] [--base IMAGE] [--tag NAME] [--skip-publish] [--no-build] [-- BUILD-ARGS]
#
#   --flavor cpu    deploy/Containerfile       (default; tag featureflow:cpu)
#   --flavor cuda   deploy/Containerfile.cuda  (tag featureflow:cuda)
#   --base IMAGE    passed as --build-arg BASE_IMAGE (default: the Containerfile's ARG)
#   --tag NAME      image name (default featureflow:FLAVOR)
#   --skip-publish  reuse artifacts/deploy/publish from an earlier run
#   --no-build      publish and stage the build context only (artifacts/deploy/context-FLAVOR)
#   -- BUILD-ARGS   passed on to `podman build` / `docker build` (e.g. -- --layers=false --pull=never)
#
# Environment: CONTAINER_TOOL=podman|docker (default: podman if installed, else docker).
#
# Steps:
#   1. dotnet publish src/FeatureFlow.Cli -c Release -r linux-x64 --self-contained -> artifacts/deploy/publish
#      (intermediate files under artifacts/deploy/build, so src/*/bin and obj of a working tree are left alone);
#   2. stage the context: app/ = the publish (the CPU flavor drops ONNX Runtime's CUDA/TensorRT provider libraries),
#      models/stories260k/ = the shipped model folder; everything root-owned and world-readable, nothing writable;
#   3. build with the flavor's Containerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

flavor=cpu base="" tag="" publish=1 build=1 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --flavor) flavor="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --skip-publish) publish=0; shift ;;
    --no-build) build=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$flavor" in
  cpu) containerfile=deploy/Containerfile ;;
  cuda) containerfile=deploy/Containerfile.cuda ;;
  *) echo "build-image.sh: --flavor must be cpu or cuda, got '$flavor'" >&2; exit 2 ;;
esac
tag="${tag:-featureflow:$flavor}"

out=artifacts/deploy
publish_dir="$out/publish"
context="$out/context-$flavor"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if [ "$publish" -eq 1 ]; then
  echo "build-image.sh: dotnet publish src/FeatureFlow.Cli (Release, linux-x64, self-contained) -> $publish_dir"
  rm -rf "$publish_dir"
  # SatelliteResourceLanguages=en: no localized resource folders for a server that logs in English.
  dotnet publish src/FeatureFlow.Cli -c Release -r linux-x64 --self-contained \
    --artifacts-path "$out/build" -o "$publish_dir" \
    -p:SatelliteResourceLanguages=en -nologo -v:minimal
fi
[ -x "$publish_dir/featureflow" ] || { echo "build-image.sh: no publish at $publish_dir (drop --skip-publish)" >&2; exit 1; }

echo "build-image.sh: staging the $flavor build context in $context"
rm -rf "$context"
mkdir -p "$context/models"
cp -a "$publish_dir" "$context/app"
cp -a models/stories260k "$context/models/stories260k"
if [ "$flavor" = cpu ]; then
  # ONNX Runtime falls back to the CPU provider when the CUDA provider library is absent (ServerHost logs which).
  rm -f "$context"/app/libonnxruntime_providers_cuda.so "$context"/app/libonnxruntime_providers_tensorrt.so
fi
# Root-owned in the image (COPY --chown=0:0); the uid 10001 user may read and execute, never write.
chmod -R u=rwX,go=rX "$context"
echo "build-image.sh: context is $(du -sh "$context" | cut -f1)"

[ "$build" -eq 1 ] || exit 0

tool="${CONTAINER_TOOL:-}"
if [ -z "$tool" ]; then
  if command -v podman >/dev/null; then tool=podman; elif command -v docker >/dev/null; then tool=docker
  else echo "build-image.sh: neither podman nor docker found (set CONTAINER_TOOL)" >&2; exit 1; fi
fi
args=(build -f "$containerfile" -t "$tag")
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
# podman/buildah default to the OCI format, which has no HEALTHCHECK; docker's format keeps it.
[ "$tool" = podman ] && args+=(--format docker)
args+=("${extra[@]}")
echo "build-image.sh: $tool ${args[*]} $context"
"$tool" "${args[@]}" "$context"
echo "build-image.sh: built $tag"

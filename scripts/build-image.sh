#!/usr/bin/env bash
# Build the project's image with podman or docker, tag it with the package version and the git commit,
# and push it when a registry is named.
#
#   scripts/build-image.sh [--cpu] [--push] [REPOSITORY]
#
#   REPOSITORY  where the image goes (default ghcr.io/si-beatgan/sibeatgan, or $SIBEATGAN_REPOSITORY);
#               tags: VERSION (pyproject) and VERSION-COMMIT (git, with -dirty for uncommitted changes)
#   --cpu       build on the CPU Debian base from scripts/podman-base.sh (made first if missing) instead of
#               the CUDA PyTorch base: for machines with no GPU or no reachable registry
#   --push      push both tags (log in first: podman login / docker login REGISTRY)
#   BASE=...    any other base image with python and torch (build argument BASE)
#   ENGINE=...  podman or docker (default: podman if present)
#   CA_BUNDLE=  a CA bundle for pip inside the build (default $PIP_CERT): where a proxy signs PyPI (podman only;
#               mounted for the build, not copied into the image)
#
# It prints the VERSION-COMMIT name last: compile the pipeline against it with
#   SIBEATGAN_IMAGE=<that name> python -m pipelines.si_beatgan
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0 push=0 repo=${SIBEATGAN_REPOSITORY:-ghcr.io/si-beatgan/sibeatgan}
for arg in "$@"; do
    case "$arg" in
        --cpu) cpu=1 ;;
        --push) push=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "build-image.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) repo=$arg ;;
    esac
done
[[ "${repo##*/}" != *[:@]* ]] || { echo "build-image.sh: give a repository without a tag or digest, not $repo" >&2; exit 2; }
[[ "$repo" =~ ^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?$ ]] || { echo "build-image.sh: $repo is not a valid image repository" >&2; exit 2; }

engine=${ENGINE:-$(command -v podman > /dev/null && echo podman || echo docker)}
command -v "$engine" > /dev/null || { echo "build-image.sh: neither podman nor docker is installed" >&2; exit 1; }

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
commit=$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD -- Dockerfile requirements.lock pyproject.toml README.md sibeatgan || commit="$commit-dirty"
tag_version="$repo:$version" tag_commit="$repo:$version-$commit"

args=()
if [ $cpu = 1 ]; then
    base=${BASE:-localhost/sibeatgan-base:cpu}
    $engine image exists "$base" 2>/dev/null || scripts/podman-base.sh "$base"
    args+=(--build-arg "BASE=$base")
    # no registry to pull from here: the base is local, and every RUN shares the host's network
    [ "$engine" = podman ] && args+=(--pull=never --network host)
elif [ -n "${BASE:-}" ]; then
    args+=(--build-arg "BASE=$BASE")
fi

ca=${CA_BUNDLE:-${PIP_CERT:-}}
if [ -n "$ca" ] && [ "$engine" = podman ]; then
    [ -f "$ca" ] || { echo "build-image.sh: CA bundle $ca does not exist" >&2; exit 2; }
    args+=(--volume "$(realpath "$ca"):/etc/ssl/certs/ca-certificates.crt:ro" --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi

echo "build-image.sh: $engine build -> $tag_commit"
start=$(date +%s)
$engine build "${args[@]}" --build-arg "IMAGE_NAME=$tag_commit" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD)" \
    --label "org.opencontainers.image.source=https://github.com/si-beatgan/sibeatgan" \
    -t "$tag_commit" -t "$tag_version" -f Dockerfile .
echo "build-image.sh: built in $(( $(date +%s) - start )) s"
# the smoke test the pipeline relies on: sibeatgan and kfp's executor import in the image, as uid 10001
$engine run --rm "$tag_commit" python -c "import sibeatgan, kfp.dsl.executor_main, flask_wtf, torch; print('image ok')"

if [ $push = 1 ]; then
    $engine push "$tag_commit" && $engine push "$tag_version"
fi
echo "$tag_commit"

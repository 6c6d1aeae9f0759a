#!/usr/bin/env bash
# Builds drover's statically linked binaries and the drover container image,
# in one step.
#
#   deploy/build-image.sh            # image drover:latest
#   DROVER_IMAGE=drover:dev deploy/build-image.sh
#   deploy/build-image.sh --no-cargo # package the binaries already built
#   deploy/build-image.sh --python   # also drover-python:latest (Dockerfile.python),
#                                    # FROM $PYTHON_IMAGE (default python:3.12-slim),
#                                    # which the Docker engine must already have
#
# The binaries are built with glibc linked statically (crt-static) for
# $DROVER_TARGET (default: <machine>-unknown-linux-gnu). Naming the target
# explicitly puts them in target/<triple>/release (under CARGO_TARGET_DIR if
# set), away from the normal target/release, so this never rebuilds or
# clobbers a developer's binaries.
# The image is FROM scratch: nothing is pulled from a registry.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
image="${DROVER_IMAGE:-drover:latest}"
target="${DROVER_TARGET:-$(uname -m)-unknown-linux-gnu}"
bins=(drover-master drover-worker drover)

cargo=1
python=0
for arg in "$@"; do
  case "$arg" in
    --no-cargo) cargo=0 ;;
    --python) python=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) printf 'build-image: unknown argument %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

log() { printf 'build-image: %s\n' "$*" >&2; }

if ((cargo)); then
  log "cargo build --release --target $target (static)"
  (
    cd "$root"
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
      cargo build --release --target "$target" \
        -p drover-master -p drover-worker -p drover-cli --bins
  )
fi

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
out="$target_dir/$target/release"
for b in "${bins[@]}"; do
  [[ -x "$out/$b" ]] || { log "missing $out/$b"; exit 1; }
  # A dynamically linked binary has a program interpreter; it cannot run
  # in a scratch image.
  if command -v readelf >/dev/null && readelf -l "$out/$b" | grep -q 'program interpreter'; then
    log "$out/$b is dynamically linked; the image needs static binaries"
    exit 1
  fi
done

# A small build context: the Dockerfile, the binaries (debug info stripped,
# symbols kept for backtraces), nsswitch.conf and an empty data directory.
ctx="$(mktemp -d "${TMPDIR:-/tmp}/drover-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$here/Dockerfile.python" "$here/nsswitch.conf" "$ctx/"
mkdir "$ctx/data"
for b in "${bins[@]}"; do
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$ctx/$b" "$out/$b"
  else
    cp "$out/$b" "$ctx/$b"
  fi
done

revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
log "docker build -t $image ($(du -sh "$ctx" | cut -f1) context)"
docker build --quiet -t "$image" \
  --label "org.opencontainers.image.title=drover" \
  --label "org.opencontainers.image.revision=$revision" \
  "$ctx" >/dev/null
log "built $image"

if ((python)); then
  python_image="${DROVER_PYTHON_IMAGE:-drover-python:latest}"
  log "docker build -t $python_image -f Dockerfile.python (FROM ${PYTHON_IMAGE:-python:3.12-slim})"
  docker build --quiet -t "$python_image" -f "$ctx/Dockerfile.python" \
    --build-arg "PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.12-slim}" \
    --label "org.opencontainers.image.title=drover-python" \
    --label "org.opencontainers.image.revision=$revision" \
    "$ctx" >/dev/null
  log "built $python_image"
fi

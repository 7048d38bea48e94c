#!/usr/bin/env bash
# Run a command in a Debian chroot of another release: a machine this one is not, for the checks that need one
# (Debian 13's lavapipe for the Vulkan build, tools/lavapipe-run.sh; Debian 11's older glibc for the wheel,
# tools/test-wheel.sh --debian bullseye). The chroot is made once with debootstrap (minbase plus PACKAGES, a comma
# list) and kept in the cache; the command runs in a private mount namespace where the checkout, the cache and /tmp
# are bind-mounted at their own paths, so binaries and files under them keep their names, and the mounts vanish
# with the command. Needs root, debootstrap and deb.debian.org.
#
#   tools/debian-run.sh SUITE PACKAGES COMMAND [ARGS…]
#   e.g. tools/debian-run.sh bullseye python3,python3-venv python3 --version
#
# DEBIAN_RUN_MOUNTS="$HOME/.cargo $HOME/.rustup" bind-mounts more directories (here: the Rust toolchain, to build
# inside).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
[ "$#" -ge 3 ] || { echo "usage: tools/debian-run.sh SUITE PACKAGES COMMAND [ARGS…]" >&2; exit 2; }
suite="$1" packages="$2"
shift 2
[ "$(id -u)" = 0 ] || { echo "tools/debian-run.sh: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
root="$cache/debian-$suite-$(printf %s "$packages" | sha256sum | cut -c1-12)"
if [ ! -e "$root/.complete" ]; then
  command -v debootstrap >/dev/null || { echo "tools/debian-run.sh: apt-get install debootstrap" >&2; exit 2; }
  rm -rf "$root"
  debootstrap --variant=minbase --include="$packages" "$suite" "$root" http://deb.debian.org/debian >&2
  touch "$root/.complete"
fi
inside="$(cat <<'EOF'
set -euo pipefail
root="$1" mounts="$2" cwd="$3"
shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
for dir in $mounts; do
  mkdir -p "$root$dir"
  mount --bind "$dir" "$root$dir"
done
exec chroot "$root" /bin/bash -c 'cd "$1" && shift && exec "$@"' bash "$cwd" "$@"
EOF
)"
# The directories to mount go in as one space-separated word (none of them may have a space in its path).
exec unshare --mount --propagation private -- /bin/bash -c "$inside" bash "$root" \
  "$repo $cache /tmp ${DEBIAN_RUN_MOUNTS:-}" "$PWD" "$@"

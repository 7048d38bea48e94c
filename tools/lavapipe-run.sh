#!/usr/bin/env bash
# Run a command on Mesa's software Vulkan driver (lavapipe) from Debian 13, for checking a `--features vulkan`
# build on a machine without a GPU. Debian 12's lavapipe (Mesa 22.3.6) crashes on Gemma 3 270M (a segfault inside
# libvulkan_lvp.so); Debian 13's (Mesa 25.0.7, LLVM 19) runs it. The command runs in a Debian 13 chroot kept in the
# cache (debootstrap, ~40 s and ~450 MB once), in a private mount namespace where the checkout, the cache and /tmp
# are bind-mounted at their own paths, so binaries and files under them keep their names. Needs root and debootstrap.
#
#   tools/lavapipe-run.sh "$CARGO_TARGET_DIR"/debug/lora-validate --base … --adapter …
#
# lavapipe is a device of type CPU, which ggml skips unless asked: GGML_VK_VISIBLE_DEVICES=0 (set here) asks.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
root="$cache/lavapipe-trixie"
[ "$#" -gt 0 ] || { echo "usage: tools/lavapipe-run.sh COMMAND [ARGS…]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "tools/lavapipe-run.sh: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
if [ ! -e "$root/.complete" ]; then
  command -v debootstrap >/dev/null || { echo "tools/lavapipe-run.sh: apt-get install debootstrap" >&2; exit 2; }
  rm -rf "$root"
  debootstrap --variant=minbase --include=mesa-vulkan-drivers,libvulkan1,vulkan-tools \
    trixie "$root" http://deb.debian.org/debian >&2
  touch "$root/.complete"
fi
# Mounts made in the new namespace vanish with it: nothing to clean up, whatever the command does.
inside="$(cat <<'EOF'
set -euo pipefail
root="$1" repo="$2" cache="$3" cwd="$4"
shift 4
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
for dir in "$repo" "$cache" /tmp; do
  mkdir -p "$root$dir"
  mount --bind "$dir" "$root$dir"
done
exec chroot "$root" /usr/bin/env GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" \
  /bin/bash -c 'cd "$1" && shift && exec "$@"' bash "$cwd" "$@"
EOF
)"
exec unshare --mount --propagation private -- /bin/bash -c "$inside" bash "$root" "$repo" "$cache" "$PWD" "$@"

#!/usr/bin/env bash
# Run a command on Mesa's software Vulkan driver (lavapipe) from Debian 13, for checking a `--features vulkan`
# build on a machine without a GPU. Debian 12's lavapipe (Mesa 22.3.6) crashes on Gemma 3 270M (a segfault inside
# libvulkan_lvp.so); Debian 13's (Mesa 25.0.7, LLVM 19) runs it. The command runs in a Debian 13 chroot
# (tools/debian-run.sh: made once, ~40 s and ~500 MB in the cache; needs root and debootstrap), with the checkout,
# the cache and /tmp at their own paths.
#
#   tools/lavapipe-run.sh "$CARGO_TARGET_DIR"/debug/lora-validate --base … --adapter …
#
# lavapipe is a device of type CPU, which ggml skips unless asked: GGML_VK_VISIBLE_DEVICES=0 (set here) asks.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: tools/lavapipe-run.sh COMMAND [ARGS…]" >&2; exit 2; }
exec "$(dirname "$0")/debian-run.sh" trixie mesa-vulkan-drivers,libvulkan1,vulkan-tools \
  env GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" "$@"

#!/usr/bin/env bash
# A Vulkan "SDK" directory for building the `vulkan` feature on Debian 12 / Ubuntu 22.04, whose Vulkan headers
# (1.3.239) are older than llama.cpp's Vulkan backend needs (it uses VK_EXT_layer_settings' C++ types, headers
# ≥ 1.3.261): the headers of Debian 13's libvulkan-dev (1.4.309), unpacked into a cache directory, next to a link to
# the system's Vulkan loader. Prints the directory; build with it as VULKAN_SDK (CMake's FindVulkan looks there
# first):
#
#   VULKAN_SDK="$(tools/vulkan-sdk.sh)" cargo build --release --features vulkan
#
# Needs the system's libvulkan1, glslc and spirv-headers (apt-get install libvulkan-dev glslc spirv-headers) and
# curl; the newer headers work with the older loader (newer entry points are looked up at run time).
set -euo pipefail
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
version="1.4.309.0-1"
sdk="$cache/vulkan-sdk-$version"
if [ -f "$sdk/include/vulkan/vulkan.hpp" ]; then
  echo "$sdk"
  exit 0
fi
loader=/usr/lib/x86_64-linux-gnu/libvulkan.so.1
[ -e "$loader" ] || { echo "no Vulkan loader (libvulkan.so.1): apt-get install libvulkan1 libvulkan-dev" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
deb="libvulkan-dev_${version}_amd64.deb"
curl -fsSL -o "$tmp/$deb" "http://deb.debian.org/debian/pool/main/v/vulkan-loader/$deb"
dpkg-deb -x "$tmp/$deb" "$tmp/root"
mkdir -p "$tmp/sdk/lib"
mv "$tmp/root/usr/include" "$tmp/sdk/include"
ln -s "$loader" "$tmp/sdk/lib/libvulkan.so"
rm -rf "$sdk"
mkdir -p "$cache"
mv "$tmp/sdk" "$sdk"
echo "$sdk"

#!/usr/bin/env bash
# Prove the README's two commands on a fresh Debian machine: a debootstrap chroot of Debian 12 with only a C linker
# (gcc, libc6-dev), ca-certificates and this machine's rustup toolchain (copied: no other can be fetched here) — no
# cmake, no C++ compiler, no libclang, no python3 — a fresh CARGO_HOME, a fresh target dir and a fresh clone of HEAD.
# Runs the README's first command (the converter on a fixture) and second command (the whole test suite) exactly as
# written and prints their wall times; after the first, it checks that the pure-Rust build's `lora-convert merge` says
# how to get merging. Needs root and debootstrap; takes ~2 min plus the two commands.
#
#   tools/fresh-machine-check.sh [WORKDIR]    # default WORKDIR: ~/.cache/lora-gguf/fresh-machine (wiped first)
#   FRESH_STEPS=first tools/fresh-machine-check.sh   # only the first command (the second takes an hour cold)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$HOME/.cache/lora-gguf/fresh-machine}"
root="$work/chroot"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
toolchain="$(rustup show active-toolchain | cut -d' ' -f1)"

cleanup() {
  for m in dev/pts dev proc sys; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done
  return 0
}
trap cleanup EXIT

cleanup
rm -rf "$work"
mkdir -p "$work"
debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$root" http://deb.debian.org/debian \
  >"$work/debootstrap.log"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A network that re-signs TLS with its own CA (a proxy, a sandbox) gives its machines that CA: so does the chroot.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
# "Only rustup": the toolchain directory and the rustup proxies, nothing from this machine's CARGO_HOME.
mkdir -p "$root/root/.rustup/toolchains" "$root/root/.cargo/bin"
cp -a "$rustup_home/toolchains/$toolchain" "$root/root/.rustup/toolchains/"
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" >"$root/root/.rustup/settings.toml"
rustup_bin="$(command -v rustup)"
for proxy in "$(dirname "$rustup_bin")"/*; do   # rustup's proxies (cargo, rustc, rustdoc …) are copies of rustup
  if cmp -s "$proxy" "$rustup_bin"; then cp "$rustup_bin" "$root/root/.cargo/bin/$(basename "$proxy")"; fi
done
git clone -q --no-hardlinks "$repo" "$root/root/lora-gguf"
git -C "$root/root/lora-gguf" checkout -q "$(git -C "$repo" rev-parse HEAD)"
for m in proc sys dev dev/pts; do mount --bind "/$m" "$root/$m"; done

for absent in cmake c++ g++ clang python3; do
  if chroot "$root" sh -c "command -v $absent" >/dev/null; then echo "fresh machine has $absent" >&2; exit 1; fi
done

first="$(sed -n '/^Build and run the converter/,/^```$/{/^cargo /p}' "$repo/README.md" | head -1)"
second="$(sed -n '/^Run the tests/,/^```$/{/^tools\//p}' "$repo/README.md" | head -1)"
[ -n "$first" ] && [ -n "$second" ] || { echo "README's commands not found" >&2; exit 1; }

# Run a README command in the chroot as a login shell of a user who only has rustup; print wall and CPU time (wall
# measured here, CPU by the chroot shell's `times`: its children's user and system time on the second line).
run() {
  local start=$SECONDS
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin \
    bash -c "cd /root/lora-gguf && ( $1 ) 2>&1; status=\$?; times >/tmp/times-$2; exit \$status" \
    >"$work/$2.log" || { tail -30 "$work/$2.log"; echo "FAILED: $1" >&2; exit 1; }
  local wall=$((SECONDS - start))
  local cpu
  cpu="$(awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' \
    "$root/tmp/times-$2")"
  echo "$2: $wall s wall, $cpu s CPU (load average $(cut -d' ' -f1-3 /proc/loadavg)): $1"
}
run "$first" first
# The default build has no llama.cpp, so no `merge`: it must say how to get it (exit 2), not fail obscurely.
chroot "$root" /usr/bin/env -i HOME=/root PATH=/root/.cargo/bin:/usr/bin:/bin bash -c \
  'cd /root/lora-gguf && target/release/lora-convert merge --base b.gguf --adapter a.gguf -o m.gguf' \
  >"$work/merge.log" 2>&1 && { echo "lora-convert merge ran in the pure-Rust build" >&2; exit 1; }
grep -q 'built without feature `merge`.*--features merge' "$work/merge.log" ||
  { cat "$work/merge.log" >&2; echo "lora-convert merge did not say how to get merging" >&2; exit 1; }
echo "merge without the feature: $(head -c 120 "$work/merge.log")…"
[ "${FRESH_STEPS:-all}" = first ] && exit 0
run "$second" second
tail -3 "$work/second.log"
run "$first" first-again

#!/usr/bin/env bash
# Debian's Chromium for the HTML report test (tests/report_chromium.rs renders `--format html` headless).
# About 81 MB to download, 290 MB installed; the test itself takes ~5 s.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium

# Sourced by tools/cuda-toolkit.sh and tools/mkl-root.sh: an SDK made of vendors' PyPI wheels — a venv in the cache
# with the pinned wheels, and a directory of links laid out as the SDK's build systems expect.

# wheel_venv DIR PIN… — install the pins once into the venv DIR (a finished install is marked, so a broken one is
# redone).
wheel_venv() {
  local venv="$1"
  shift
  if [ ! -f "$venv/.installed" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
    touch "$venv/.installed"
  fi
}

# link_libs DEST LIB… — link each shared library into DEST under its own name and the unversioned one a linker
# looks for (libcublas.so.13 → also libcublas.so), which the wheels leave out.
link_libs() {
  local dest="$1" lib name
  shift
  mkdir -p "$dest"
  for lib in "$@"; do
    name="$(basename "$lib")"
    ln -s "$lib" "$dest/$name"
    case "$name" in *.so.*) ln -sf "$lib" "$dest/${name%%.so.*}.so" ;; esac
  done
}

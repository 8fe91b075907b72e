#!/usr/bin/env bash
# Build LAMMPS (the 4 Feb 2025 stable release, Debian 13 "trixie" source package
# lammps 20250204+dfsg.1-2) with ML-IAP + Python ("unified" models), PYTHON and MPI, and install
# its Python module into the active Python environment.
#
#   bash .ci/build_lammps.sh            # uses `python` on PATH (activate the venv first)
#   PYTHON=/path/to/python bash .ci/build_lammps.sh
#
# Idempotent: the build is cached in ${E2FORMER_LAMMPS_CACHE:-$HOME/.cache/e2former-ci}/lammps-20250204
# (outside the repository) and skipped when that cache holds a build made for the same Python and
# options; the Python module (a wheel that carries liblammps.so) is (re)installed every time.
#
# Needs: apt (Debian; root installs missing build tools: cmake, g++, OpenMPI, xz), the Debian
# archive keyring, PyPI (cython, and setuptools/wheel for LAMMPS's wheel builder).
# The source comes from Debian 13 through a separate apt configuration in the cache folder; the
# system's /etc/apt is left alone. Files are checked against the SHA-256 sums of the signed index.
set -euo pipefail

say() { printf '[build_lammps] %s\n' "$*"; }
die() { printf '[build_lammps] ERROR: %s\n' "$*" >&2; exit 1; }
SECONDS=0

DEB_VERSION=20250204+dfsg.1-2
ORIG_TARBALL=lammps_20250204+dfsg.1.orig.tar.xz
SRC_DIRNAME=lammps-4Feb2025
CACHE_ROOT=${E2FORMER_LAMMPS_CACHE:-$HOME/.cache/e2former-ci}
PREFIX=$CACHE_ROOT/lammps-20250204
WORK=$CACHE_ROOT/lammps-20250204-work
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-python}

PY_EXE=$("$PYTHON" -c 'import sys; print(sys.executable)') || die "no Python at '$PYTHON'"
PY_TAG=$("$PY_EXE" -c 'import sys, sysconfig; print(sys.version.split()[0], sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("Py_ENABLE_SHARED"))')
say "Python: $PY_EXE ($PY_TAG)"
"$PY_EXE" -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)' ||
  die "this Python was built without a shared libpython; LAMMPS's PYTHON package needs one"

CMAKE_OPTIONS=(
  -D CMAKE_BUILD_TYPE=Release
  -D BUILD_SHARED_LIBS=on
  -D BUILD_MPI=on
  -D BUILD_OMP=on
  -D PKG_ML-SNAP=on
  -D PKG_ML-IAP=on
  -D PKG_PYTHON=on
  -D MLIAP_ENABLE_PYTHON=on
  # (LAMMPS_EXCEPTIONS is no option of this release any more: 20250204 always throws C++ exceptions)
)
# what the cached build was made for: a different Python or option set rebuilds
PATCH_ID="mliap-firstneigh-rows-v1"  # the source fix below
STAMP_TEXT="lammps $DEB_VERSION + $PATCH_ID | python $PY_TAG | ${CMAKE_OPTIONS[*]}"
STAMP=$PREFIX/.e2former-build-stamp

install_module() {
  local wheel
  wheel=$(ls "$PREFIX"/share/e2former-wheel/lammps-*.whl 2>/dev/null | head -1)
  [ -n "$wheel" ] || die "no LAMMPS wheel in $PREFIX/share/e2former-wheel"
  say "installing the LAMMPS Python module ($(basename "$wheel")) into $("$PY_EXE" -c 'import sys; print(sys.prefix)')"
  "$PY_EXE" -m pip install --quiet --no-deps --force-reinstall --no-index "$wheel"
  # cython is only needed to build; numpy is needed at run time by the ML-IAP coupling
  "$PY_EXE" - <<'EOF'
import lammps, lammps.mliap  # noqa: F401  (lammps.mliap warns unless an interpreter embeds it)
lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
missing = [p for p in ("ML-IAP", "ML-SNAP", "PYTHON") if not lmp.has_package(p)]
if missing:
    raise SystemExit(f"LAMMPS lacks packages {missing}")
if not lmp.has_mpi_support:
    raise SystemExit("LAMMPS was built without MPI")
print(f"[build_lammps] LAMMPS {lmp.version()} loads from {lammps.__file__} "
      f"(MPI: {lmp.has_mpi_support}, exceptions: {lmp.has_exceptions})")
lmp.close()
EOF
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ]; then
  say "cached build found in $PREFIX"
  install_module
  say "done in ${SECONDS}s (cached build)"
  exit 0
fi
say "no usable cached build in $PREFIX: building (takes a few minutes)"

# --- build tools --------------------------------------------------------------------------
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v mpicxx >/dev/null || need+=(libopenmpi-dev)
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v xz >/dev/null || need+=(xz-utils)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing build tools (${need[*]}); install them or run as root"
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
say "cmake $(cmake --version | head -1 | awk '{print $3}'), $(g++ --version | head -1), $(mpirun --version 2>&1 | head -1)"
say "pip install cython (build-time, for ML-IAP's Python coupling)"
"$PY_EXE" -m pip install --quiet "cython>=3" numpy

# --- the Debian 13 source, through a separate apt configuration ---------------------------
mkdir -p "$WORK"/apt/lists/partial "$WORK"/apt/cache/archives/partial "$WORK"/download
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  > "$WORK"/apt/sources.list
APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
          -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
if [ ! -f "$WORK/download/$ORIG_TARBALL" ]; then
  say "apt-get update (Debian 13 sources index, signature checked with the Debian archive keyring)"
  apt-get "${APT_OPTS[@]}" update -qq
  say "apt-get source --download-only lammps=$DEB_VERSION"
  # a mirror may miss the .dsc; the tarball alone is enough (its hash is checked below)
  (cd "$WORK/download" && apt-get "${APT_OPTS[@]}" source --download-only "lammps=$DEB_VERSION") ||
    say "apt-get source reported an error (checking what arrived)"
fi
[ -f "$WORK/download/$ORIG_TARBALL" ] || die "the source tarball $ORIG_TARBALL did not arrive"
signed_sha256() {  # the tarball's SHA-256 in the (signature-checked) Sources index
  apt-cache "${APT_OPTS[@]}" showsrc lammps 2>/dev/null |
    awk -v v="$DEB_VERSION" -v f="$ORIG_TARBALL" '
      /^Package:/ {ok=0} $1=="Version:" {ok=($2==v)} /^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0}
      ok && s && $3==f {print $1; exit}'
}
want=$(signed_sha256)
if [ -z "$want" ]; then  # no index (tarball left from an earlier run): fetch the index again
  apt-get "${APT_OPTS[@]}" update -qq
  want=$(signed_sha256)
fi
have=$(sha256sum "$WORK/download/$ORIG_TARBALL" | awk '{print $1}')
[ -n "$want" ] && [ "$want" = "$have" ] || die "SHA-256 of $ORIG_TARBALL is $have, the signed index says '$want'"
say "source verified: $ORIG_TARBALL sha256 $have"

if [ ! -f "$WORK/$SRC_DIRNAME/.unpacked" ]; then
  rm -rf "${WORK:?}/$SRC_DIRNAME" "$WORK/build"
  say "unpacking (without examples/, unittest/ and the documentation sources; doc/lammps.1 is installed)"
  tar -xf "$WORK/download/$ORIG_TARBALL" -C "$WORK" --exclude="$SRC_DIRNAME/examples" \
    --exclude="$SRC_DIRNAME/unittest" --exclude="$SRC_DIRNAME/doc/src" --exclude="$SRC_DIRNAME/doc/graphviz" \
    --exclude="$SRC_DIRNAME/doc/utils"
  touch "$WORK/$SRC_DIRNAME/.unpacked"
else
  say "reusing the unpacked sources and build folder of an unfinished earlier run (incremental build)"
fi

# --- one fix to the sources -------------------------------------------------------------
# ML-IAP 20250204 allocates its copy of the neighbour lists, lmp_firstneigh, as
# (atoms with lists) x (all pairs) ints: with ghost neighbour lists (pair_style mliap unified
# FILE 1) that is ~100 GB for 4,000 Cu atoms, and the allocation fails. Each row only ever holds
# one atom's pairs, so the patch sizes the rows by the largest per-atom pair count.
"$PY_EXE" - "$WORK/$SRC_DIRNAME/src/ML-IAP" <<'PATCH'
import sys
from pathlib import Path
folder = Path(sys.argv[1])
header, source = folder / "mliap_data.h", folder / "mliap_data.cpp"
h, c = header.read_text(), source.read_text()
if "nneigh_row_max" in h:
    print("[build_lammps] ML-IAP sources already patched")
    raise SystemExit(0)
edits_h = [("  int nneigh_max;", "  int nneigh_row_max;            // columns of lmp_firstneigh (e2former-calc patch)\n  int nneigh_max;")]
edits_c = [
    ("  nneigh_max = 0;\n", "  nneigh_max = 0;\n  nneigh_row_max = 0;\n"),
    ('    memory->grow(lmp_firstneigh, natomneigh, nneigh_max, "MLIAPData:lmp_firstneigh");\n',
     '    memory->grow(lmp_firstneigh, natomneigh, nneigh_row_max > 0 ? nneigh_row_max : 1, "MLIAPData:lmp_firstneigh");\n'),
    ("  int nneigh = 0;\n", "  int nneigh = 0;\n  int nrowmax = 0;\n"),
    ("    nneigh += ninside;\n", "    nneigh += ninside;\n    if (ninside > nrowmax) nrowmax = ninside;\n"),
    ('    memory->grow(lmp_firstneigh, natomneigh, nneigh, "MLIAPData:lmp_firstneigh");\n', ""),
    ("    nneigh_max = nneigh;\n  }\n",
     "    nneigh_max = nneigh;\n  }\n  if (nneigh_row_max < nrowmax) {\n    nneigh_row_max = nrowmax;\n"
     '    memory->grow(lmp_firstneigh, natomneigh_max, nneigh_row_max, "MLIAPData:lmp_firstneigh");\n  }\n'),
    ("  bytes += (double) nneigh_max * natomneigh_max * sizeof(int);    // lmp_firstneigh",
     "  bytes += (double) nneigh_row_max * natomneigh_max * sizeof(int);    // lmp_firstneigh"),
]
for text, edits, path in ((h, edits_h, header), (c, edits_c, source)):
    for old, new in edits:
        if text.count(old) != 1:
            raise SystemExit(f"[build_lammps] the patch does not apply to {path.name}: {old!r} occurs {text.count(old)} times")
        text = text.replace(old, new)
    path.write_text(text)
print("[build_lammps] patched ML-IAP's lmp_firstneigh allocation (rows sized by the largest per-atom pair count)")
PATCH

# --- configure, build, install ------------------------------------------------------------
say "cmake configure -> $PREFIX"
cmake -S "$WORK/$SRC_DIRNAME/cmake" -B "$WORK/build" -Wno-dev \
  -D CMAKE_INSTALL_PREFIX="$PREFIX" -D Python_EXECUTABLE="$PY_EXE" -D Python_FIND_VIRTUALENV=FIRST \
  "${CMAKE_OPTIONS[@]}" > "$WORK/cmake-configure.log" 2>&1 ||
  { tail -40 "$WORK/cmake-configure.log"; die "cmake configure failed (log: $WORK/cmake-configure.log)"; }
grep -E "Installed packages|Python|MPI" "$WORK/cmake-configure.log" | sed 's/^/[build_lammps]   /' | head -20
build_start=$SECONDS
say "cmake --build -j$JOBS (log: $WORK/build.log)"
if ! cmake --build "$WORK/build" -j"$JOBS" > "$WORK/build.log" 2>&1; then
  # an earlier run killed mid-compile can leave a broken object behind: once more from clean
  say "the build failed; building once more from clean"
  cmake --build "$WORK/build" -j"$JOBS" --clean-first > "$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log"; die "the LAMMPS build failed (log: $WORK/build.log)"; }
fi
say "compiled in $((SECONDS - build_start))s"
rm -rf "$PREFIX"
cmake --install "$WORK/build" > "$WORK/install.log" 2>&1 || { tail -20 "$WORK/install.log"; die "cmake --install failed"; }
mkdir -p "$PREFIX/share/e2former-wheel"
say "building the Python wheel (python/install.py, wheel carries liblammps.so)"
(cd "$WORK/build" && "$PY_EXE" "$WORK/$SRC_DIRNAME/python/install.py" -p "$WORK/$SRC_DIRNAME/python/lammps" \
   -l "$WORK/build/liblammps.so" -w "$PREFIX/share/e2former-wheel" -v "$WORK/$SRC_DIRNAME/src/version.h" -n \
   > "$WORK/wheel.log" 2>&1) || { tail -30 "$WORK/wheel.log"; die "building the LAMMPS wheel failed"; }
install_module
echo "$STAMP_TEXT" > "$STAMP"
# keep the cache small: the installed tree and the wheel stay, the sources and objects go
rm -rf "${WORK:?}/$SRC_DIRNAME" "$WORK/build"
say "done in ${SECONDS}s (fresh build); cache: $PREFIX ($(du -sh "$PREFIX" | cut -f1))"

#!/usr/bin/env bash
# Build a CUDA-aware MPI for the GPU checks: Open MPI 4.1.4 (Debian bookworm's source package)
# configured --with-cuda, so that bench/device_check.sh's "cudaaware" step can hand device
# buffers to MPI for real. The MPI wheels on PyPI (MPICH 5.0, Open MPI 5.0) are built without
# CUDA, and the GPU machines reach no network, so the build happens here and travels with the
# working tree (about 14 MB, glibc >= 2.34; never committed: .ompi-cuda/ is git-ignored).
#
#     bash bench/cuda_mpi.sh              # ~25 min on 2 cores; needs apt (Debian), gcc, and
#                                         # the CUDA headers (CUDA_HOME, default /usr/local/cuda*)
#
# Open MPI loads the CUDA driver (libcuda.so.1) at run time, so only cuda.h is needed to build:
# a machine without a GPU builds it, and there it still answers MPIX_Query_cuda_support() = 1
# (Open MPI 4.1 reports how it was built). Installed under PREFIX (default
# /tmp/embzip-ompi-cuda, the path it must live at when run: Open MPI finds its plugins by its
# build prefix), then copied to .ompi-cuda in the repository root for carrying.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/tmp/embzip-ompi-cuda}
CUDA_HOME=${CUDA_HOME:-$(ls -d /usr/local/cuda* 2>/dev/null | sort -V | tail -1)}
[ -f "$CUDA_HOME/include/cuda.h" ] || { echo "no cuda.h under CUDA_HOME=$CUDA_HOME" >&2; exit 1; }
WORK=$(mktemp -d /tmp/embzip-ompi-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Debian's source package, through a private apt state (the machine's apt lists stay as they are)
mkdir -p "$WORK/parts" "$WORK/lists/partial"
cat >"$WORK/parts/src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt=(-oDir::Etc::SourceList=/dev/null "-oDir::Etc::SourceParts=$WORK/parts" "-oDir::State::Lists=$WORK/lists")
apt-get "${apt[@]}" -qq update
(cd "$WORK" && apt-get "${apt[@]}" -qq source --download-only openmpi=4.1.4-3)
tar -C "$WORK" -xf "$WORK"/openmpi_4.1.4.orig.tar.xz

# Only what a single-node test needs: shared memory (smcuda moves device buffers through CUDA
# IPC) and TCP; no Fortran, no MPI-IO, no OpenSHMEM, no InfiniBand.
# glibc's arc4random (2.36) is declined, as if absent, so that the build also loads where glibc
# is 2.34 or 2.35 (Ubuntu 22.04): libevent then compiles its own, as static functions of the
# same names, which clash with glibc 2.36's declarations; they are renamed after the headers.
cd "$WORK/openmpi-4.1.4"
export ac_cv_func_arc4random=no ac_cv_func_arc4random_buf=no ac_cv_func_arc4random_addrandom=no
sed -i 's|^#define ARC4RANDOM_EXPORT static$|&\n#define arc4random ev_arc4random_\n#define arc4random_buf ev_arc4random_buf_|' \
    opal/mca/event/libevent2022/libevent/evutil_rand.c
grep -q "define arc4random_buf ev_arc4random_buf_" opal/mca/event/libevent2022/libevent/evutil_rand.c
./configure --prefix="$PREFIX" --with-cuda="$CUDA_HOME" --disable-mpi-fortran --disable-oshmem \
    --disable-io-romio --with-hwloc=internal --with-libevent=internal --with-pmix=internal \
    --without-ucx --without-verbs --disable-man-pages >"$WORK/configure.log" 2>&1 \
    || { tail -40 "$WORK/configure.log"; exit 1; }
make -j"$(nproc)" >"$WORK/make.log" 2>&1 || { tail -40 "$WORK/make.log"; exit 1; }
rm -rf "$PREFIX"
make install >"$WORK/install.log" 2>&1 || { tail -40 "$WORK/install.log"; exit 1; }
"$PREFIX/bin/ompi_info" --parsable --all | grep -q "mpi_built_with_cuda_support:value:true"
cd - >/dev/null
rm -rf .ompi-cuda
cp -a "$PREFIX" .ompi-cuda
# the newest glibc symbol version it needs (objdump fails on the shell scripts in bin/: ignored)
glibc=$( { find .ompi-cuda -type f \( -name "*.so*" -o -path "*/bin/*" \) -print0 \
           | xargs -0 objdump -T 2>/dev/null || true; } | grep -o "GLIBC_[0-9.]*" | sort -V -u | tail -1)
echo "CUDA-aware Open MPI in $PREFIX and .ompi-cuda ($(du -sh .ompi-cuda | cut -f1), needs $glibc); carry .ompi-cuda"

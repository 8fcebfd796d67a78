#!/usr/bin/env bash
# One prepared GPU session: real-GPU tests, then the codec and comm timings, each step under its
# own time limit so that one failure does not eat the others' time. Logs go to $OUT (or ./out).
#
# Carry .whl (numpy 2.4 for numba-cuda, mpich + mpi4py for MPI, glove50k.npy; see docs/cuda.md,
# "Running on a GPU") and run from the repository root:
#
#     bash bench/device_check.sh            # stops starting steps at BUDGET_S (default 560 s)
#     STEPS="tests comm" bash bench/device_check.sh
#
# Steps, in the order they run (most needed first: a step that would end past BUDGET_S gets
# what is left, at least 30 s, or is skipped): env (versions, GPU, MPI), tests (every test that
# needs a real GPU), cudaaware (only when .ompi-cuda is carried: bench/cuda_mpi.sh builds it),
# hazards (what only hardware shows: the numba allocator, 2**31+ values, compute-sanitizer when
# the image has it), gpu (bench/gpu.py: bound + CPU parity on real data, then compress /
# decompress GB/s; GPU_ARGS="--max-mib 256" to shorten it), comm (bench/alltoall.py with cupy
# buffers, 4 ranks sharing the GPU), cudacomm (the same under the CUDA-aware MPI), overhead
# (bench/gpu_overhead.py: what a small compress's time is made of), hostab (host buffers,
# plain vs bypass, on a host with a core per rank).
set -u
export OUT=${OUT:-$PWD/out}  # (exported: steps run under bash -c read it)
mkdir -p "$OUT"
STEPS=${STEPS:-"env tests cudaaware hazards gpu comm cudacomm overhead hostab"}
BUDGET_S=${BUDGET_S:-560}  # under the device tool's 600 s per command, with room for the copy back
VENV=/tmp/embzip-venv
started=$(date +%s)

# numba-cuda 0.30 cannot compile against numpy 2.5 (the device image's): a venv whose own
# site-packages (the carried wheels, -I: also where the image has the same version) come before
# the image's (cupy, numba, numba-cuda, torch, pytest). The image's python3 is itself a venv, so
# --system-site-packages would reach past it: a .pth adds its site-packages instead. mpich's
# mpiexec and libmpi land in the venv's bin/ and lib/, where mpi4py looks for them.
python3 -m venv --without-pip "$VENV"
image_site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
venv_site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir('$image_site')" >"$venv_site/zz_image.pth"
"$VENV/bin/python" -m pip install -q -I --no-index --no-deps --no-compile ${WHEELS:-.whl}/*.whl || exit 1
export PATH="$VENV/bin:$PATH" PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
unset NUMBA_ENABLE_CUDASIM EMBZIP_CUDA_AWARE_MPI
status=0

step() {  # step NAME LIMIT_S COMMAND...: run, log, remember a failure, go on
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return ;; esac
    local left=$(( BUDGET_S - ($(date +%s) - started) ))
    if [ $left -lt 30 ]; then
        echo "=== $name: skipped, ${left}s of BUDGET_S left"
        status=1
        return
    fi
    [ $limit -le $left ] || limit=$left
    echo "=== $name (limit ${limit}s, at +$(( $(date +%s) - started ))s): $*"
    timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 60 "$OUT/$name.log"
    echo "=== $name: rc=$rc after +$(( $(date +%s) - started ))s"
    [ $rc -eq 0 ] || status=1
}

step env 60 bash -c 'nvidia-smi -L; python - <<"EOF"
import numpy, numba, cupy
from numba import cuda
from mpi4py import MPI
print("numpy", numpy.__version__, "numba", numba.__version__, "cupy", cupy.__version__)
print("MPI:", MPI.Get_library_version().splitlines()[0])
from embzip.comm import _mpi
print("MPI says CUDA-aware:", _mpi.library_cuda_support())
print("numba sees", cuda.gpus)
EOF'

# Every test that needs a real GPU (the rest run on CI's CPUs).
# TESTS="node ids" runs a subset (a rerun of what failed).
step tests 200 python -m pytest -q -p no:cacheprovider --timeout 240 -rs ${TESTS:-\
    tests/test_cuda_device.py tests/test_cuda_ptx.py \
    tests/test_comm_gpu_units.py::test_real_cupy_staging_roundtrip \
    tests/test_comm_device.py::test_cupy_segments_on_a_real_gpu \
    tests/test_comm_device.py::test_fortran_receive_view_on_a_real_gpu \
    tests/test_comm_device.py::test_mpi_two_ranks_cupy_buffers_on_a_real_gpu}

# A CUDA-aware MPI (Open MPI 4.1 built by bench/cuda_mpi.sh, carried as .ompi-cuda, run from the
# prefix it was built for): the cupy exchanges with MPI moving device blobs and buffers itself
# (the worker fails unless MPI says it is CUDA-aware), then the same 4-rank timings, where plain
# Alltoallv of device buffers is the baseline to read.
if [ -d .ompi-cuda ]; then
    rm -rf /tmp/embzip-ompi-cuda && cp -a .ompi-cuda /tmp/embzip-ompi-cuda
    OMPI=/tmp/embzip-ompi-cuda
    aware=(env PATH="$OMPI/bin:$PATH" LD_LIBRARY_PATH="$OMPI/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
           MPI4PY_MPIABI=openmpi MPI4PY_LIBMPI="$OMPI/lib/libmpi.so.40" EMBZIP_MPIEXEC="$OMPI/bin/mpiexec"
           OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 EMBZIP_TEST_CUDA_AWARE_MPI=1)
    step cudaaware 200 "${aware[@]}" python -m pytest -q -p no:cacheprovider --timeout 180 -rs \
        tests/test_comm_device.py::test_mpi_two_ranks_cupy_buffers_cuda_aware_on_a_real_gpu \
        tests/test_comm_device.py::test_mpi_two_ranks_cupy_buffers_on_a_real_gpu
fi

# What only hardware shows, beyond the tests step: the numba allocator (cupy's pool is what
# runs when cupy works, so the numba path never ran on a GPU), index arithmetic past 2**31
# values, and compute-sanitizer's race, barrier and memory checks on a small workload.
step hazards 150 bash -c 'EMBZIP_CUDA_ALLOCATOR=numba python -m pytest -q -p no:cacheprovider --timeout 120 -rs \
        tests/test_cuda_device.py -k "(test_parity_large and fast and (float32 or dtype0)) or \
        test_caller_on_a_nonblocking_cupy_stream or test_repeated_compress_is_byte_identical" || exit 1
    EMBZIP_TEST_HUGE=1 python -m pytest -q -p no:cacheprovider --timeout 120 -rs \
        tests/test_cuda_device.py::test_beyond_two_to_the_31_values || exit 1
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    if [ -z "$sanitizer" ]; then echo "no compute-sanitizer in this image"; exit 0; fi
    for tool in memcheck racecheck synccheck; do
        "$sanitizer" --tool $tool --error-exitcode 3 python bench/gpu_tiny_workload.py || exit 1
    done'

step gpu 100 python bench/gpu.py --glove .whl/glove50k.npy ${GPU_ARGS:-}

# Where the codec runs for GPU buffers (embzip/comm/_placement.py): forced to each place, then
# measured (auto; its warm-up of 4 exploring calls is inside --warmup 6).
step comm 200 bash -c 'for codec in gpu cpu auto; do
    EMBZIP_COMM_CODEC=$codec mpiexec -n 4 python bench/alltoall.py --device cupy --glove .whl/glove50k.npy \
        --label "cupy, 4 ranks, 1 GPU, codec $codec" --reps 10 --warmup 6 --json "$OUT/comm-$codec.json" ${COMM_ARGS:-} || exit 1
done' 

if [ -d .ompi-cuda ]; then
    step cudacomm 120 "${aware[@]}" mpiexec --oversubscribe -n 4 python bench/alltoall.py --device cupy \
        --glove .whl/glove50k.npy --label "cupy, 4 ranks, 1 GPU, CUDA-aware Open MPI" --reps 10 --warmup 4 \
        --json "$OUT/cudacomm.json" ${COMM_ARGS:-}
fi

step overhead 90 python bench/gpu_overhead.py

# The bypass's cost with host buffers where every rank has a core of its own (the CPU dev box
# has 2 cores for 4 ranks): plain vs the same MPI calls the bypass makes vs the bypass, 3 runs.
step hostab 150 bash -c 'for run in 1 2 3; do
    mpiexec -n 4 python bench/alltoall.py --glove .whl/glove50k.npy --methods plain,control,bypass \
        --reps 40 --label "host, 4 ranks, run $run" --json "$OUT/hostab$run.json" || exit 1
done'

echo "device_check: status $status after $(( $(date +%s) - started ))s"
exit $status

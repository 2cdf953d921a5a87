#!/usr/bin/env bash
# The GPU checks of the issue "The real job fast", as one command for a lent GPU machine
# (the workplace's device tool: run(command="bash benchmarks/device_check.sh",
# timeout_s=540)). Nothing here runs in CI, which has no GPU.
#
# On a machine with CUDA, a python3 holding torch and this project's dependencies
# (numpy, scipy, scikit-learn, numba, pytest, hypothesis; the lent H200 image has them)
# and no network, it
#   1. installs this checkout in editable mode, without dependencies or a build
#      environment (setuptools and wheel from the machine),
#   2. runs the torch accumulator and adapter tests, whose device parameters include
#      "cuda" where torch sees one (tests/test_torch_moments.py,
#      tests/test_adapters_torch.py, tests/test_adapters_onnx.py),
#   3. runs the CUDA cases of benchmarks/run.py: the report (report / forward passes,
#      the bytes copied device -> host during one report against the statistics'
#      bytes, peak device memory for N and 2N images) and the dense algebra (eigh and
#      svd on the device, copies included, against numpy on the host: whether a
#      layer's algebra should move to the device).
# Everything it prints is also written to $OUT/device-check.log ($OUT: the device
# tool's folder of files to bring back; ./device-check when unset).
set -uo pipefail
out="${OUT:-device-check}"
mkdir -p "$out"
log="$out/device-check.log"
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
    python3 -m pytest -q -p no:cacheprovider --no-header \
        tests/test_torch_moments.py tests/test_adapters_torch.py tests/test_adapters_onnx.py
    tests=$?
    python3 benchmarks/run.py --case resnet-cuda --case algebra-cuda
    bench=$?
    echo "tests exit $tests, benchmark exit $bench"
    [ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
} 2>&1 | tee "$log"

#!/usr/bin/env bash
# The wheels that scripts/device_check.sh installs on the device machine, which has PyTorch,
# Lightning, torchmetrics, rich, NumPy and SciPy (Python 3.12) but no network: mtl's other
# dependencies, and TorchJD and LibMTL for bench_step.py's peers. Run here, in the repository's
# root, where PyPI can be reached; they land in .whl/ (ignored by git), about 12 MiB. Versions as
# in the CPU benchmarks (BENCHMARKS.md). Left out, to stay within the 64 MiB a device call
# carries: cvxpy's solvers SCS (a 43 MB wheel) and its sparsediffpy (12 MB), which TorchJD's
# methods do not use (CAGrad solves with Clarabel, Nash-MTL with ECOS); cvxpy then lists SCS as not
# installed. antlr4-python3-runtime 4.9.3 has no wheel on PyPI, so it is built here (pure Python).
set -euo pipefail
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 quadprog==0.1.14 \
    torchjd==0.18.0 qpsolvers==4.13.0 cvxpy==1.9.3 osqp==1.1.3 clarabel==0.11.1 ecos==2.0.14 \
    highspy==1.16.0 qdldl==0.1.9.post1 cffi==2.1.1 pycparser==3.12 LibMTL==1.1.5
python3 -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
du -sh .whl

#!/usr/bin/env bash
# Installs what hybridiff builds against, on Debian 12 as root (or with sudo). Idempotent: skips what is present.
#   Debian packages: CAF 0.17.6, spdlog, Boost.Program_options, GoogleTest, nlohmann-json, libpng, SentencePiece,
#                    cpp-httplib (serve),
#                    ccache, clang with its sanitizer/libFuzzer runtime (scripts/fuzz.sh), clang-format
#                    (scripts/check-format.sh), the Fashion-MNIST data set (the built-in model's tests), SLURM and
#                    munge (deploy/slurm/local-cluster.sh: the SLURM recipe's test).
#   PyPI: torch==2.11.0, whose bundled LibTorch is the C++ library we link (the version the CUDA builds use too).
set -euo pipefail

debian_packages=(cmake g++ make ccache libcaf-dev libspdlog-dev libboost-program-options-dev
  libgtest-dev libgmock-dev nlohmann-json3-dev libpng-dev zlib1g-dev libcpp-httplib-dev pkg-config
  libsentencepiece-dev clang clang-format libclang-rt-14-dev dataset-fashion-mnist munge slurmctld slurmd slurm-client)
torch_version=2.11.0

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in "${debian_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: Debian packages present"
fi

python=${PYTHON:-python3}
if ! "$python" -m pip --version >/dev/null 2>&1; then
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
fi
if "$python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$torch_version' else 1)" \
    2>/dev/null; then
  echo "install-deps: torch $torch_version present"
else
  echo "install-deps: installing torch==$torch_version from PyPI (LibTorch for C++)"
  "$python" -m pip install --quiet --disable-pip-version-check "torch==$torch_version" \
    || "$python" -m pip install --quiet --disable-pip-version-check --break-system-packages "torch==$torch_version"
fi

#!/bin/sh
# Installs modelyard into a fresh virtual environment: the one set of install steps that both
# container images run (Dockerfile, Dockerfile.cuda), and that the test suite runs too.
#
#   sh docker/install.sh VENV [SOURCE]
#
# SOURCE is the project directory (default: the one this script is in). Environment:
#   MODELYARD_EXTRAS  extras to install (default "encoder"; "demo" adds the demo models,
#                     "" is chat only, no torch)
#   TORCH_SPEC        the torch requirement (default "torch==2.13.0", the version the README
#                     installs and the tests run with)
#   TORCH_INDEX       where torch comes from (default PyTorch's CPU index, so no CUDA build
#                     is pulled; empty: pip's own index; a CUDA index for GPU images)
#   XLLAMACPP_INDEX   an index with a GPU build of xllamacpp (llama.cpp), installed over the
#                     CPU build (e.g. https://xorbitsai.github.io/xllamacpp/whl/cu128)
set -eu
venv=${1:?usage: install.sh VENV [SOURCE]}
source=${2:-$(cd "$(dirname "$0")/.." && pwd)}
extras=${MODELYARD_EXTRAS-encoder}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
torch_index=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}

python3 -m venv "$venv"
pip="$venv/bin/pip"
# As the README's install: torch through pip (from its index), uv for the rest (the same
# requirements, resolved and installed in a third of pip's time), bytecode compiled once.
"$pip" install -q uv
uv() { "$venv/bin/uv" pip install -q --python "$venv/bin/python" "$@"; }
if [ -n "$extras" ]; then
  # torch first: sentence-transformers would otherwise pull the CUDA build (several GB).
  if [ -n "$torch_index" ]; then
    "$pip" install -q "$torch_spec" --index-url "$torch_index"
  else
    "$pip" install -q "$torch_spec"
  fi
  uv --compile-bytecode "$source[$extras]"
else
  uv --compile-bytecode "$source"
fi
if [ -n "${XLLAMACPP_INDEX:-}" ]; then
  uv --reinstall --no-deps xllamacpp --index-url "$XLLAMACPP_INDEX"
fi
"$pip" uninstall -q -y uv  # an installer, not part of what runs
# What the image runs must import: the CLI, the llama.cpp worker, and the encoder's stack.
"$venv/bin/modelyard" --version
"$venv/bin/python" -c "import modelyard.workers.llamacpp, xllamacpp"
if [ -n "$extras" ]; then
  "$venv/bin/python" -c "import modelyard.workers.encoder, sentence_transformers, onnxruntime"
fi

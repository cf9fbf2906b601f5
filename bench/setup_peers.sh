#!/usr/bin/env bash
# Installs the peers BENCH.md compares modelyard with, each in its own virtual environment
# under bench/.peers/<name>/ (never in the project's), and records what happened in
# bench/.peers/status.json: the version installed, or why it could not be.
#
#   bash bench/setup_peers.sh                # all peers
#   bash bench/setup_peers.sh litellm        # one (litellm | llama-cpp-python | infinity)
#
# llama-cpp-python builds llama.cpp from source: about 7 minutes on 2 cores.
set -u
cd "$(dirname "$0")"
PEERS=.peers
mkdir -p "$PEERS"
python=${PYTHON:-python3}

declare -A SPEC=(
  [litellm]="litellm[proxy]"
  [llama-cpp-python]="llama-cpp-python[server]"
  [infinity]="infinity-emb[server,torch]"
)
declare -A PACKAGE=([litellm]=litellm [llama-cpp-python]=llama_cpp_python [infinity]=infinity_emb)
# Infinity runs on torch: the CPU build first, or pip pulls the CUDA one (several GB).
declare -A FIRST=([infinity]="torch==2.13.0")

names=("$@")
[ ${#names[@]} -eq 0 ] && names=(litellm llama-cpp-python infinity)

for name in "${names[@]}"; do
  spec=${SPEC[$name]:-}
  if [ -z "$spec" ]; then echo "unknown peer $name" >&2; exit 2; fi
  venv="$PEERS/$name"
  log="$PEERS/$name.log"
  echo "installing $spec into bench/$venv (log: bench/$log) ..."
  rm -rf "$venv"
  status=0
  # uv (the project's, when it is installed) resolves and installs the same requirements in
  # a third of pip's time; pip otherwise.
  if [ -x ../.venv/bin/uv ]; then
    install() { ../.venv/bin/uv pip install --python "$venv/bin/python" "$@"; }
  else
    install() { "$venv/bin/pip" install "$@"; }
  fi
  {
    "$python" -m venv "$venv" &&
    install ${FIRST[$name]:-pip} &&
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) install "$spec"
  } >"$log" 2>&1 || status=$?
  if [ $status -eq 0 ]; then
    version=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('${PACKAGE[$name]}'))")
    key=installed value=$version
    echo "  $name $version"
  else
    reason=$(grep -E "ERROR|error:" "$log" | tail -3 | tr '\n' ' ' | cut -c1-400)
    key=error value="pip failed ($status): $reason"
    echo "  $name NOT INSTALLABLE here: $reason" >&2
  fi
  "$python" - "$PEERS/status.json" "$name" "$key" "$value" <<'PY'
import json, sys, pathlib
path, name, key, value = pathlib.Path(sys.argv[1]), *sys.argv[2:5]
status = json.loads(path.read_text()) if path.exists() else {}
status[name] = {key: value}
path.write_text(json.dumps(status, indent=1) + "\n")
PY
done

#!/usr/bin/env bash
# Proves the simulator against a real GPU, in one run on a machine with an NVIDIA GPU:
#   1. the environment report (graphlab doctor) and setup()'s backend line;
#   2. the cost model's calibration (graphlab calibrate --write);
#   3. every claim of graphlab_utils.claims on the real backend and on the simulator, side by side;
#   4. modelled vs measured timings of the standard workloads (benchmarks/sim_vs_real.py);
#   5. what a GPU prints for the failing captures the lessons show (tools/gpu/probe_errors.py).
# Usage, from the repository root:  bash tools/gpu/simulator-proof.sh OUTDIR
set -uo pipefail
out=${1:?usage: simulator-proof.sh OUTDIR}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { echo; echo "=== $*" | tee -a "$log"; }
step "graphlab doctor";   python3 -m graphlab_utils doctor 2>&1 | tee -a "$log"
step "setup()";           python3 -c "import graphlab_utils as gl; print(gl.setup())" 2>&1 | tee -a "$log"
step "calibrate";         python3 -m graphlab_utils calibrate --write --out "$out/calibration.json" 2>&1 | tee -a "$log"
step "conformance";       python3 -m graphlab_utils.authoring.conformance --backend real --backend sim --json "$out/conformance.json" 2>&1 | tee -a "$log"
step "sim vs real";       python3 benchmarks/sim_vs_real.py --out-dir "$out" 2>&1 | tail -25 | tee -a "$log"
step "probe errors";      python3 tools/gpu/probe_errors.py "$out/probe.json" 2>&1 | tee -a "$log"

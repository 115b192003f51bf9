#!/usr/bin/env bash
# Run tools/TOOL on one device, or on several through paddle.distributed.launch (what train.sh and val.sh call).
#   scripts/launch.sh train.py [ARGS...]     ARGS: -o Section.key=value overrides, --resume, --weights, ...
# Environment:
#   CONFIG=config/t2t_vit_7.yaml  the config (default: the tool's, the lit_data demo config/t2t_vit_7_demo.yaml;
#                                 given --weights, a checkpoint's own settings, which a CONFIG may not contradict)
#   GPUS=0,1,2,3                  several GPUs on this machine
#   NPROC=2                       several CPU processes (gloo), e.g. to try multi-process runs without a GPU
#   NNODES=2 MASTER=IP:PORT       several machines: run the same command on each (same GPUS), MASTER = first machine
#   MAX_RESTARTS=3                train.py: restart every rank from the newest checkpoint after a rank failed, at
#                                 most this many times (0: never)
#   LAUNCH_LOG_DIR=DIR            where the launcher keeps each process's log (default log/launch_<tool>)
#   PYTHON=python3                the interpreter
# Exit code: the tool's (2: bad input or a storage fault); 130 / 143 when SIGINT / SIGTERM stopped the run, also
# over several processes; 75 when a rank failed (killed, crashed, or hung past Global.hang_timeout) and no restart
# was left, after one line naming it and the command that resumes the run. train.py, and any tool on several
# processes, runs under scripts/paddle_launch.py, which does all this (docs/training.md#preemption-and-faults).
# CPU threads per process (and MKL's fast path on AMD) are set by tools/t2tvit/cpu_env.py, which every tool imports
# first, so `python tools/X.py` and this script run with the same settings; it also keeps known third-party noise
# off the output (tools/t2tvit/quiet.py, each message by name; -v shows it). No warning category is silenced here:
# Paddle's AMP warnings (bf16 not supported, falling back) must reach the user.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${1:?usage: scripts/launch.sh TOOL.py [ARGS...] (e.g. train.py, val.py)}
shift
[ -f "tools/$tool" ] || { echo "error: scripts/launch.sh: no tool tools/$tool" >&2; exit 2; }
launch=()
if [ -n "${GPUS:-}" ]; then
  launch=(--devices "$GPUS")
elif [ -n "${NPROC:-}" ]; then
  launch=(--nproc_per_node "$NPROC")
fi
if [ -n "${NNODES:-}" ]; then
  launch+=(--nnodes "$NNODES" --master "${MASTER:?set MASTER=IP:PORT of the first machine}")
fi
[ ${#launch[@]} -eq 0 ] || launch+=(--log_dir "${LAUNCH_LOG_DIR:-log/launch_${tool%.py}}")
[ "$tool" != train.py ] || launch=(--restarts "${MAX_RESTARTS:-3}" ${launch[@]+"${launch[@]}"})
if [ ${#launch[@]} -eq 0 ]; then
  exec "${PYTHON:-python3}" "tools/$tool" ${CONFIG:+-c "$CONFIG"} "$@"
fi
exec "${PYTHON:-python3}" scripts/paddle_launch.py "${launch[@]}" "tools/$tool" ${CONFIG:+-c "$CONFIG"} "$@"

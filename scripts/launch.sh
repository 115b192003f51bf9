# Sourced by train.sh and val.sh: runs tools/$TOOL on one device, or several through paddle.distributed.launch.
#   GPUS=0,1,2,3            several GPUs on this machine
#   NPROC=2                 several CPU processes (gloo), e.g. to try multi-process runs without a GPU
#   NNODES=2 MASTER=IP:PORT several machines: run the same command on each (same GPUS), MASTER = first machine
PYTHON=${PYTHON:-python3}
# CPU threads per process (and MKL's fast path on AMD) are set by tools/cpu_env.py, which every tool imports
# first, so `python tools/X.py` and these scripts run with the same settings.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning}
launch=()
if [ -n "${GPUS:-}" ]; then
  launch=(-m paddle.distributed.launch --devices "$GPUS")
elif [ -n "${NPROC:-}" ]; then
  launch=(-m paddle.distributed.launch --nproc_per_node "$NPROC")
fi
if [ -n "${NNODES:-}" ]; then
  [ ${#launch[@]} -gt 0 ] || launch=(-m paddle.distributed.launch)
  launch+=(--nnodes "$NNODES" --master "${MASTER:?set MASTER=IP:PORT of the first machine}")
fi
[ ${#launch[@]} -eq 0 ] || launch+=(--log_dir "log/launch_${TOOL%.py}")
exec "$PYTHON" "${launch[@]}" "tools/$TOOL" -c "${CONFIG:-config/t2t_vit_7_demo.yaml}" "$@"

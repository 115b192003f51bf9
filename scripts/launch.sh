# Sourced by train.sh and val.sh: runs tools/$TOOL on one device, or several through paddle.distributed.launch.
#   GPUS=0,1,2,3            several GPUs on this machine
#   NPROC=2                 several CPU processes (gloo), e.g. to try multi-process runs without a GPU
#   NNODES=2 MASTER=IP:PORT several machines: run the same command on each (same GPUS), MASTER = first machine
PYTHON=${PYTHON:-python3}
# Paddle's MKL takes a slow path on AMD CPUs unless told otherwise (on Intel the same setting slows it down).
if grep -q AuthenticAMD /proc/cpuinfo 2>/dev/null; then export MKL_DEBUG_CPU_TYPE=${MKL_DEBUG_CPU_TYPE:-5}; fi
# Paddle's dynamic graph uses one math thread unless told: give each CPU process its share of the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / ${NPROC:-1} > 0 ? $(nproc) / ${NPROC:-1} : 1 ))}
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

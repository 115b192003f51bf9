"""CPU settings every command needs before Paddle loads, and what this CPU has; imported first by each tool (no
Paddle import here).

Sets, unless the user has already set them:
- OMP_NUM_THREADS = the cores this process may use / the processes on this machine (PADDLE_LOCAL_SIZE, set by
  paddle.distributed.launch for each process it starts; 1 otherwise), at least 1. Paddle's dynamic graph uses
  one math thread without it.
- MKL_DEBUG_CPU_TYPE=5 on AMD CPUs only: MKL's fast path, which it otherwise reserves for Intel (on Intel the
  same setting slows it down).
Both are read when Paddle's math libraries load, so they must be in the environment before `import paddle`;
scripts/launch.sh relies on this module rather than setting them itself. Paddle notes at import that
OMP_NUM_THREADS is above 1, as if by mistake: quiet.install() (at the end) keeps that note and the other
third-party noise off the command's output unless it runs with -v.
"""
import os
import sys

from . import quiet


def usable_cores():
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota if there is one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def is_amd_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return "AuthenticAMD" in f.read(1 << 16)
    except OSError:
        return False


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of AVX512_BF16 and AMX-BF16


def cpu_flags():
    """The CPU's feature flags as /proc/cpuinfo names them (avx2, avx512_vnni, ...); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16():
    flags = cpu_flags()
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def thread_share(environ=None):
    """This process's share of the usable cores: divided among the processes on this machine (PADDLE_LOCAL_SIZE in
    `environ`, default os.environ), at least 1."""
    environ = os.environ if environ is None else environ
    try:
        local_procs = max(1, int(environ.get("PADDLE_LOCAL_SIZE", "1")))
    except ValueError:
        local_procs = 1
    return max(1, usable_cores() // local_procs)


def cpu_settings(environ=None):
    """The variables this module would add to `environ` (default os.environ): {name: value}."""
    environ = os.environ if environ is None else environ
    wanted = {"OMP_NUM_THREADS": str(thread_share(environ))}
    if is_amd_cpu():
        wanted["MKL_DEBUG_CPU_TYPE"] = "5"
    return {k: v for k, v in wanted.items() if not environ.get(k)}


def apply(environ=None):
    environ = os.environ if environ is None else environ
    added = cpu_settings(environ)
    environ.update(added)
    return added


def launch_environment():
    """The environment this process was started with ({name: value}), as the kernel keeps it: what the shell or
    launcher gave, not what the process set since. None where unreadable (not Linux)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return None
    return dict(e.decode("utf-8", "replace").split("=", 1) for e in entries if b"=" in e)


_caught_up = False


def catch_up_with_paddle():
    """For the Python API: a script that imported Paddle before its first call of the API, in a process started
    without OMP_NUM_THREADS, got one math thread (Paddle sets OMP_NUM_THREADS=1 when it loads without it). Give
    Paddle this process's share of the cores now, through its own set_num_threads (its MKL and OpenMP threads),
    once; the threads asked for where the process was started stay. Returns the threads set, or None.
    MKL_DEBUG_CPU_TYPE cannot follow: MKL reads it when it loads."""
    global _caught_up
    if _caught_up or "paddle" not in sys.modules:
        return None
    _caught_up = True
    started = launch_environment()
    threads = thread_share()
    if started is None or started.get("OMP_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") != "1" or threads < 2:
        return None
    sys.modules["paddle"].base.core.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


apply()
quiet.install()

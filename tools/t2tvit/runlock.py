"""One training run per output folder: Global.output_dir/train.lock, and the run id of every log line.

The lock file (lockfile.LockFile) holds its holder as JSON (host, pid, started, command, run) and, where fcntl
exists, a flock held for the run's life: a lock whose flock can be taken on this host is stale and is taken
over with a warning. A lock from another host cannot be judged from here (flock may not cross a network file
system): the run refuses, naming the holder.
"""
import json
import os
import re
import secrets
import socket
import time

from .errors import UserError
from .lockfile import LockFile

LOCK_NAME = "train.lock"
# scripts/paddle_launch.py gives every rank of one launch the same run id through this variable
RUN_ID_ENV = "T2T_RUN_ID"
RUN_ID = re.compile(r"\d{8}-\d{6}-\d+-[0-9a-f]{4}")


def new_run_id():
    """A run's id: its start time, pid and random hex (unique across restarts and hosts)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"


def this_run_id():
    """The id its launcher gave this run (RUN_ID_ENV), else a new one."""
    given = os.environ.get(RUN_ID_ENV, "")
    return given if RUN_ID.fullmatch(given) else new_run_id()


def describe(holder):
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}, "
            f"run {holder.get('run')}: {holder.get('command')}")


class RunLock(LockFile):
    """acquire() takes folder/train.lock or raises UserError naming its holder; release() gives it back."""

    def __init__(self, folder, run_id, command):
        self.folder = folder
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "run": run_id, "command": command}
        super().__init__(os.path.join(folder, LOCK_NAME), json.dumps(self.holder) + "\n")

    def acquire(self, warn=print):
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            what = "is a file, not a folder" if os.path.isfile(self.folder) else f"cannot be made ({e.strerror})"
            raise UserError(f"Global.output_dir {self.folder} {what}: give a folder for the run's checkpoints") \
                from None
        return super().acquire(warn)

    def parse(self, text):
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def refusal(self, holder):
        if not ({"host", "pid"} <= set(holder)):
            return UserError(f"{self.path} is not a lock of this repo, or is damaged: it names no holder (host and "
                             "pid); remove it if no run uses this folder")
        return UserError(f"Global.output_dir {self.folder} is in use by another training run ({describe(holder)}); "
                         f"wait for it to end or use another Global.output_dir (if that run is gone, "
                         f"remove {self.path})")

    def uncreatable(self, error):
        return UserError(f"Global.output_dir {self.folder}: cannot create its lock there: {error.strerror}")

    def unopenable(self, error):
        return UserError(f"{self.path} is not a lock file of this repo ({error.strerror}): remove it if no run "
                         "uses this folder")

    def taken_over(self, holder):
        return f"warning: {self.path} was left by a run that is gone ({describe(holder)}): taken over"

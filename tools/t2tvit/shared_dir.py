"""Every rank of a run sees one Global.output_dir and resumes from the one checkpoint rank 0 chose.

Machines that do not share the output folder would each resume on their own: only those that find
latest.pdckpt resume, data parallelism has already broadcast the fresh weights, so the ranks never re-sync and
training silently diverges. So, at start-up and before the first step (resume_point):
- rank 0 decides what the run resumes from (CheckpointDir.resume_from, as a run on one process does) and writes
  that decision into the folder, TOKEN_NAME: the run's id, the checkpoint's path, epoch, step and sha256 (a
  finished run or a refusal is no decision: every rank ends as rank 0 does, nothing written);
- the token's digest reaches every rank through an all-reduce, a channel that does not go through the folder;
- every other rank reads the token from its own view of the folder, checks it against that digest, and loads the
  checkpoint the token names, checking its sha256, epoch and step;
- a second all-reduce gathers which ranks failed: if any did, every rank stops with the same one-line error.
"""
import hashlib
import json
import os
import socket

from . import atomic
from .checkpoint import RunComplete, load_file, sha256_of
from .errors import StorageError, UserError

TOKEN_NAME = "ranks.json"
DIGEST_BITS = 52  # the part of a sha256 that a float64 all-reduce carries exactly
PROCEED, FINISHED, REFUSED = 0.0, 1.0, 2.0  # rank 0's decision, as the all-reduce carries it


def digest_number(data):
    """The first DIGEST_BITS bits of sha256(data), as a float (exact)."""
    return float(int(hashlib.sha256(data).hexdigest(), 16) >> (256 - DIGEST_BITS))


def resume_point(rt, ckpts, run_id, decide):
    """(path, loaded checkpoint) or (None, None) that every rank resumes from: `decide()` run on rank 0 alone
    (CheckpointDir.resume_from), checked by every rank as above.

    What rank 0's decision raises, every rank raises: RunComplete (the run has nothing left to train) or a
    UserError (rank 0's own, the others saying that rank 0 refused), so that no rank waits for the others in vain.
    """
    if rt.world == 1:
        return decide()
    token = os.path.join(ckpts.root, TOKEN_NAME)
    path = state = refusal = problem = None
    sent = [0.0, PROCEED]
    if rt.is_main:
        try:
            path, state = decide()
            data = json.dumps(decision(path, state, run_id), sort_keys=True).encode()
            try:
                atomic.write_bytes(token, data)
            except OSError as e:
                raise StorageError(token, e) from None
            sent = [digest_number(data), PROCEED]
        except RunComplete as e:
            refusal, sent = e, [0.0, FINISHED]
        except UserError as e:
            refusal, sent = e, [0.0, REFUSED]
    expected, outcome = rt.all_sum(sent)
    if outcome == FINISHED:
        raise refusal or RunComplete("rank 0 found that the run has trained all its epochs: nothing to train")
    if outcome == REFUSED:
        raise refusal or UserError("rank 0 refused to start the run: its error line says why")
    if not rt.is_main:
        try:
            path, state = follow(token, expected)
        except UserError as e:
            problem = f"rank {rt.rank} on host {socket.gethostname()}: {e}"
    flags = [0.0] * rt.world
    flags[rt.rank] = float(problem is not None)
    failed = [r for r, flag in enumerate(rt.all_sum(flags)) if flag]
    if failed:
        who = f"rank {failed[0]} does" if len(failed) == 1 else f"ranks {', '.join(map(str, failed))} do"
        raise UserError(f"Global.output_dir {ckpts.root} is not one folder shared by every rank: {who} not see "
                        "what rank 0 wrote there"
                        f"{f' ({problem})' if problem else ''}. On several machines it must be shared storage (a "
                        "network file system) mounted at the same path on each; nothing was trained")
    return path, state


def decision(path, state, run_id):
    """What rank 0 tells the other ranks: this run, and the checkpoint it resumes from (or none)."""
    if path is None:
        return {"run": run_id, "resume": None}
    with open(path, "rb") as f:
        digest = sha256_of(f)
    return {"run": run_id, "resume": path, "epoch": state["epoch"], "step": state["step"], "sha256": digest}


def follow(token, expected):
    """(path, state) named by the token file at `token` if it is the one whose digest is `expected`."""
    try:
        with open(token, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {token} ({e.strerror})") from None
    if digest_number(data) != expected:
        raise UserError(f"{token} is not the one rank 0 wrote for this run")
    told = json.loads(data)
    if told["resume"] is None:
        return None, None
    path = told["resume"]
    try:
        state = load_file(path, sha256=told["sha256"])
    except UserError as e:
        raise UserError(f"the checkpoint rank 0 resumes from is not the same file here: {e}") from None
    if (state.get("epoch"), state.get("step")) != (told["epoch"], told["step"]):
        raise UserError(f"{path} holds epoch {state.get('epoch')}, step {state.get('step')}, not rank 0's "
                        f"epoch {told['epoch']}, step {told['step']}")
    return path, state

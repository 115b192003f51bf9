"""Which samples each rank reads, in which order, with which augmentation seed.

Training: the data order is a function of (seed, epoch) and each sample's augmentation seed of (seed, epoch,
index), and a global batch splits the same way over any number of devices and accumulation steps, so runs
are device-count invariant and resumable at any optimizer step. Evaluation: every image once over all ranks.
"""
import numpy as np

from . import errors


def sample_seed(seed, epoch, index):
    """The augmentation seed of sample `index` in `epoch`: a 32-bit hash of the three."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1)[0])


def _whole(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class TrainBatchSampler:
    """Yields this rank's micro-batches of (index, sample_seed), drop-last, in a (seed, epoch) order.

    Optimizer step s consumes the global batch perm[s*G:(s+1)*G], G = batch_size * world_size *
    accum_steps; micro-step j of rank r takes the slice at offset (j * world_size + r) * batch_size. So
    the samples of each optimizer step, and their augmentation, are the same for any split of G into
    devices x accumulation steps.
    """

    def __init__(self, num_samples, batch_size, world_size=1, rank=0, accum_steps=1, seed=0):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.accum_steps = accum_steps
        self.seed = seed
        self.global_batch = batch_size * world_size * accum_steps
        if self.steps_per_epoch == 0:
            raise errors.UserError(
                f"the training set has {num_samples} images, fewer than the global batch {self.global_batch} "
                f"(batch_size {batch_size} x {world_size} devices x {accum_steps} accumulation steps); "
                f"lower Data.global_batch_size (or Data.batch_size)")
        self.set_epoch(0)

    @property
    def steps_per_epoch(self):
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch, start_step=0):
        """Iterate `epoch` from optimizer step `start_step` (to resume inside an epoch); a UserError for a step past
        the epoch's end (a checkpoint saved before the training list shrank)."""
        if not (_whole(epoch) and epoch >= 0 and _whole(start_step)):
            raise ValueError(f"epoch {epoch!r} and start_step {start_step!r} must be whole numbers, epoch >= 0")
        if not 0 <= start_step <= self.steps_per_epoch:
            raise errors.UserError(
                f"cannot continue epoch {epoch + 1} after optimizer step {start_step}: the training set has "
                f"{self.num_samples} images, {self.steps_per_epoch} steps of {self.global_batch} per epoch (did the "
                "training list change since the checkpoint was saved? resume with the same data, or start afresh "
                "in another Global.output_dir)")
        self.epoch = epoch
        self.start_step = start_step

    def permutation(self):
        # Legacy RandomState: its stream is frozen across NumPy versions, unlike Generator's.
        state = np.random.SeedSequence((self.seed, self.epoch)).generate_state(4)
        return np.random.RandomState(state).permutation(self.num_samples)

    def __iter__(self):
        # Not a generator function: what can fail (the epoch's permutation) runs here, in the thread that calls
        # iter(), which is the main one. Paddle's DataLoader draws the batches in a thread of its own, where an
        # exception is lost and leaves the main thread waiting for ever; the batches below cannot fail.
        return self._batches(self.permutation())

    def _batches(self, perm):
        g, b = self.global_batch, self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            for j in range(self.accum_steps):
                lo = step * g + (j * self.world_size + self.rank) * b
                yield [(int(i), sample_seed(self.seed, self.epoch, int(i))) for i in perm[lo:lo + b]]

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.accum_steps


class EvalBatchSampler:
    """Rank r gets indices r, r + W, r + 2W, ... in batches, in order: every image once over all ranks."""

    def __init__(self, num_samples, batch_size, world_size=1, rank=0):
        self.indices = range(rank, num_samples, world_size)
        self.batch_size = batch_size

    def __iter__(self):
        for lo in range(0, len(self.indices), self.batch_size):
            yield list(self.indices[lo:lo + self.batch_size])

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

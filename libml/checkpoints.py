"""The run's checkpoints: which exist, the newest that reads back, and saving them on every worker.

Under ``--strategy multiworker`` every worker takes part in a save (saving runs collective ops),
but only the chief's checkpoints are kept, in the run folder; the other workers write into a
temporary folder of their own machine and delete it at once. Every worker restores from the
chief's folder, so the run folder must be on a file system that all of them see.
"""
import glob
import os
import shutil
import sys
import tempfile

import tensorflow as tf

from libml.errors import DC3Error


class RunCheckpoints:
    """The checkpoints of one run folder (``<run>/ckpt``), as seen by one worker."""

    def __init__(self, checkpoint, directory, keep, chief=True):
        self.checkpoint = checkpoint
        self.directory = directory
        self.chief = chief
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)

    @property
    def latest(self):
        """The newest checkpoint the chief has recorded (read from disk: on the other workers
        the manager never saves, so its own record would stay at the start's)."""
        if self.chief:
            return self.manager.latest_checkpoint
        return tf.train.latest_checkpoint(self.directory)

    def save(self, step):
        if self.chief:
            return self.manager.save(checkpoint_number=step)
        scratch = tempfile.mkdtemp(prefix='dc3-worker-ckpt-')
        try:
            tf.train.CheckpointManager(self.checkpoint, scratch, max_to_keep=1).save(
                checkpoint_number=step)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None

    def restore_newest_readable(self):
        """See ``restore_newest_readable``."""
        return restore_newest_readable(self.checkpoint, self.directory, self.manager)


def checkpoints_newest_first(ckpt_dir, manager):
    """Every checkpoint of the folder, newest first: the manager's list, and any ``ckpt-N`` whose
    ``checkpoint`` state file is missing or damaged."""
    found = set(manager.checkpoints)
    for index in glob.glob(os.path.join(ckpt_dir, 'ckpt-*.index')):
        found.add(index[:-len('.index')])

    def number(path):
        digits = path.rsplit('-', 1)[-1]
        return int(digits) if digits.isdigit() else -1
    return sorted(found, key=number, reverse=True)


def restore_newest_readable(checkpoint, ckpt_dir, manager):
    """Restores the newest checkpoint that reads back; an unreadable one (truncated, flipped
    bytes) is skipped with a warning. Returns its path, or None for a run without checkpoints;
    never silently starts from step 0 while checkpoints exist."""
    candidates = checkpoints_newest_first(ckpt_dir, manager)
    first_error = None
    for path in candidates:
        try:
            checkpoint.restore(path).expect_partial()
            return path
        # What TensorFlow raises for truncated or altered files varies with the damage.
        except (tf.errors.OpError, ValueError, KeyError, IndexError, AssertionError) as e:
            first_error = first_error or f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
            print(f'warning: checkpoint {path} is unreadable ({type(e).__name__}); trying the '
                  'one before', file=sys.stderr)
    if candidates:
        raise DC3Error(f'none of the {len(candidates)} checkpoints in {ckpt_dir} reads back '
                       f'({first_error}); move the folder away to train again from step 0')
    return None

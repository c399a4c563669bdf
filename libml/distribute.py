"""Several replicas (``tf.distribute``): the strategy of ``--strategy``, and batch-wide quantities.

Inside ``strategy.run`` every replica holds its own slice of the global batch. Most losses are
per-image means, which the training loop turns into global ones by dividing each replica's mean by
the number of replicas before the optimiser sums the gradients. A few quantities depend on the whole
batch at once -- DC3's batch ranking of ``p_a``, the sums of ``use_loss_rescale``, synchronised
batch-norm moments -- and go through the helpers below. With one replica (the default strategy, or
a mirrored strategy over one device) they add no collective op and compute what they did before.
"""
import functools

import tensorflow as tf

from libml.errors import DC3Error

STRATEGIES = ('default', 'mirrored')


def make_strategy(name):
    """``default``: the current strategy (one device); ``mirrored``: every GPU of this machine,
    or, without GPUs, every logical CPU device (one unless the process configured more)."""
    if name == 'default':
        return tf.distribute.get_strategy()
    if name == 'mirrored':
        return _mirrored_strategy()
    raise DC3Error(f'--strategy must be one of {", ".join(STRATEGIES)}, got {name!r}')


@functools.cache
def _mirrored_strategy():
    # One per process: a second MirroredStrategy numbers its collective ops from the same start
    # as the first, and the runtime then pairs ops of different shapes (TF issue 62790).
    devices = tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU')
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def several_replicas():
    """The replica context when several replicas run in sync, else None (one device, or outside
    ``strategy.run``)."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def num_replicas():
    context = several_replicas()
    return 1 if context is None else context.num_replicas_in_sync


def global_sum(value):
    """``value`` summed over the replicas (differentiable: the gradient is summed back)."""
    context = several_replicas()
    return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def global_batch_size(values):
    """Rows of ``values`` over all replicas (every replica holds the same number)."""
    return tf.shape(values)[0] * num_replicas()


def on_global_batch(fn, values):
    """``fn`` applied to the rows of every replica together, cut back to this replica's rows.

    For batch statistics without gradient (ranks): ``values`` are gathered under stop_gradient, since
    a gradient through another replica's rows would need that replica's backward pass.
    """
    values = tf.stop_gradient(values)
    context = several_replicas()
    if context is None:
        return fn(values)
    size = tf.shape(values)[0]
    start = size * tf.cast(context.replica_id_in_sync_group, tf.int32)
    return fn(context.all_gather(values, axis=0))[start:start + size]

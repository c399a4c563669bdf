"""Several replicas (``tf.distribute``): the strategy of ``--strategy``, and batch-wide quantities.

Inside ``strategy.run`` every replica holds its own slice of the global batch. Most losses are
per-image means, which the training loop turns into global ones by dividing each replica's mean by
the number of replicas before the optimiser sums the gradients. A few quantities depend on the whole
batch at once -- DC3's batch ranking of ``p_a``, the sums of ``use_loss_rescale``, synchronised
batch-norm moments -- and go through the helpers below. With one replica (the default strategy, or
a mirrored strategy over one device) they add no collective op and compute what they did before.
"""
import functools
import json
import os
import shutil

import tensorflow as tf

from libml.errors import DC3Error

STRATEGIES = ('default', 'mirrored', 'multiworker')
SLURM_PORT_BASE = 'DC3_SLURM_PORT_BASE'  # first port of SLURM workers (default 8888)


def make_strategy(name):
    """``default``: the current strategy (one device); ``mirrored``: every GPU of this machine,
    or, without GPUs, every logical CPU device (one unless the process configured more);
    ``multiworker``: one process per machine, the cluster named by TF_CONFIG or by SLURM.

    ``multiworker`` must be made before TensorFlow runs its first op (it configures the runtime's
    collective ops); ``cli.run`` makes it first thing. Every call returns the same strategy.
    """
    if name not in STRATEGIES:
        raise DC3Error(f'--strategy must be one of {", ".join(STRATEGIES)}, got {name!r}')
    if name != 'multiworker' and os.environ.get('TF_CONFIG'):
        # TensorFlow would ignore it, and every process would train alone into the same folder.
        raise DC3Error(f'TF_CONFIG is set but --strategy is {name}; pass --strategy multiworker '
                       'to train on the cluster it names, or unset TF_CONFIG')
    if name == 'default':
        return tf.distribute.get_strategy()
    if name == 'mirrored':
        return _mirrored_strategy()
    return _multiworker_strategy()


def cluster_resolver():
    """The cluster of ``--strategy multiworker``: TF_CONFIG if set (one process per task, e.g.
    written by Kubernetes' TFJob or ``scripts/launch_workers.py``), else the SLURM job step
    (``srun``), with ports from $DC3_SLURM_PORT_BASE up, one per task of a node."""
    resolvers = tf.distribute.cluster_resolver
    if os.environ.get('TF_CONFIG'):
        try:
            config = json.loads(os.environ['TF_CONFIG'])
            workers = config['cluster']['worker']
            task = config['task']
            task_type, task_id = task['type'], int(task['index'])
        except (ValueError, KeyError, TypeError) as e:
            raise DC3Error(f'TF_CONFIG is not a cluster description ({type(e).__name__}: {e}); '
                           'expected {"cluster": {"worker": ["host:port", ...]}, "task": '
                           '{"type": "worker", "index": i}}') from None
        tasks = len(config['cluster'].get(task_type, ()))
        if not 0 <= task_id < tasks or not workers:
            raise DC3Error(f'TF_CONFIG: task {task_type} {task_id} is not in its cluster '
                           f'({tasks} {task_type} tasks)')
        return resolvers.TFConfigClusterResolver()
    if 'SLURM_PROCID' in os.environ and 'SLURM_STEP_NUM_TASKS' in os.environ:
        try:
            port_base = int(os.environ.get(SLURM_PORT_BASE, 8888))
        except ValueError:
            raise DC3Error(f'${SLURM_PORT_BASE} must be a port number, got '
                           f'{os.environ[SLURM_PORT_BASE]!r}') from None
        if 'CUDA_VISIBLE_DEVICES' in os.environ or shutil.which('nvidia-smi'):
            gpus = {}  # the resolver shares each node's GPUs among its tasks
        else:
            # No GPUs: the resolver would count them with nvidia-smi and pairs tasks with GPUs,
            # so it is given one pretend GPU per task and told to leave the devices alone.
            tasks = int(os.environ['SLURM_STEP_NUM_TASKS'])
            gpus = dict(gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
        try:
            return resolvers.SlurmClusterResolver(port_base=port_base, **gpus)
        except (RuntimeError, ValueError, KeyError) as e:
            raise DC3Error(f'the SLURM job step does not describe a cluster ({e}); run the '
                           'script with srun, one task per machine (or per GPU)') from None
    raise DC3Error('--strategy multiworker needs a cluster: set TF_CONFIG in every worker '
                   '(scripts/launch_workers.py does on one machine) or start the workers with '
                   'SLURM srun')


@functools.cache
def _multiworker_strategy():
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver())
    except RuntimeError as e:
        if 'collective' in str(e).lower():
            raise DC3Error('--strategy multiworker must be set up before TensorFlow runs any op '
                           f'({str(e).splitlines()[0]}); make the strategy first '
                           '(distribute.make_strategy)') from None
        raise


def is_chief(strategy):
    """True in the process that writes the run's files: always, except the workers of a
    multi-worker cluster other than the chief (worker 0, or the task of type ``chief``)."""
    return bool(strategy.extended.should_checkpoint)


def worker_id(strategy):
    """``'worker 1'`` in a multi-worker cluster, else '' (for messages)."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or resolver.task_type is None:
        return ''
    return f'{resolver.task_type} {resolver.task_id}'


def agree(strategy, value, what, fix):
    """Checks that every worker computed the same integer ``value`` (e.g. the step it resumed
    at): one error line naming both values if not. With one process it is a no-op."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    local = tf.constant([float(value)], tf.float64)  # exact for integers below 2^53

    def replica_fn():
        return tf.distribute.get_replica_context().all_gather(local, axis=0)
    values = strategy.experimental_local_results(strategy.run(tf.function(replica_fn)))[0]
    low, high = int(tf.reduce_min(values)), int(tf.reduce_max(values))
    if low != high:
        raise DC3Error(f'the workers disagree on {what} ({low} to {high}); {fix}')


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

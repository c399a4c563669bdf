"""Which keys of a run's args.json define the run (TensorFlow-free, so scripts/report.py can use it).

Operational keys may change between invocations of the same run folder: they say how a run is
operated (where it lives, how often it reports or saves, which checkpoint to evaluate), not what
it optimises. ``strategy`` is one of them because what it changes is recorded apart: ``replicas``
(the global batch and the pools of CE^-1 partners) and ``sync_bn``. ``fused_bn_act`` changes only
which kernels compute batch norm + leaky ReLU (the same network, to float rounding).

Keys added after runs were recorded without them are listed in ``ADDED_DEFAULTS`` with the value
the older code implied: a run folder recorded without such a key is the same run as one recorded
with that value, and a key at that value stays out of the folder's hash, so older runs resume.
"""
OPERATIONAL_KEYS = ('report_kimg', 'save_kimg', 'keep_ckpt', 'eval_ckpt', 'train_dir',
                    'nan_policy', 'eval_batch', 'deterministic', 'strategy', 'fused_bn_act',
                    # Not operational but outside the run's identity too: recorded, and checked
                    # on its own (run_files.prepare_run_dir, the export), so that a re-imported
                    # dataset is noticed without renaming any run.
                    'dataset_fingerprint')

# key -> the behaviour of the code before the key existed (see the module's docstring)
ADDED_DEFAULTS = {'bn_batches': 'joint'}  # 2026-12-05: --bn_batches per_subset

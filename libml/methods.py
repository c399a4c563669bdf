"""Every method by name, and the one way to build a method with DC3 composed in.

Used by ``cli.py`` (through ``build``), ``bench/``, ``tests/`` and ``scripts/run_ablation.py``. The
method classes live in their scripts at the repository root (FixMatch's layout), so the registry
names them and imports them when asked; the module itself imports no TensorFlow, so that
``scripts/run_ablation.py`` can list the methods quickly.
"""
import importlib
import os

from libml import hparams

# name (= script at the repository root) -> class name in it
METHODS = {
    'fully_supervised': 'FullySupervised',
    'pi_model': 'PiModel',
    'mean_teacher': 'MeanTeacher',
    'pseudo_label': 'PseudoLabel',
    'fixmatch': 'FixMatch',
    'dnll': 'DNLL',
    'foc': 'FOC',
}
PAPER_METHODS = ('fully_supervised', 'pi_model', 'mean_teacher', 'pseudo_label', 'fixmatch')


def method_class(name):
    """The method class of a script name (``'mean_teacher'`` -> ``MeanTeacher``)."""
    return getattr(importlib.import_module(name), METHODS[name])


def params_defaults(name):
    """The method's own hyperparameters at their defaults."""
    return hparams.defaults(method_class(name).Params)


def flag_defaults(name):
    """Every flag of the method's script with its default, as the script sets them."""
    from libml import dc3, models, trainer
    cls = method_class(name)
    values = {}
    for config in (trainer.TrainConfig, models.ModelConfig, dc3.DC3Config, cls.Params):
        values.update(hparams.defaults(config))
    values.update(cls.flag_defaults)
    return values


def build(method_cls, dataset_info, labeled_size, train_config, model_config, dc3_config=None,
          **params):
    """The method ready to train: the process set up (``trainer.configure_process``) and DC3
    composed in when ``dc3_config`` enables it (a disabled one builds the vanilla method)."""
    from libml import dc3, trainer
    from libml.errors import DC3Error
    composed = dc3_config is not None and dc3_config.enabled
    if composed and not method_cls.composes_with_dc3:
        raise DC3Error(f'{method_cls.method_name} is its own framework and does not compose with '
                       'DC3; run it with --combined_output 0 --wou 0 --wol 0')
    trainer.configure_process(train_config)
    if composed:
        return dc3.with_dc3(method_cls)(dataset_info, labeled_size, train_config, model_config,
                                        dc3=dc3_config, **params)
    return method_cls(dataset_info, labeled_size, train_config, model_config, **params)


def _config_from_args(config_cls, args, **overrides):
    """``config_cls`` from a run's recorded arguments; fields it does not hold keep defaults (a
    run recorded before the field existed)."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    return config_cls(**{**{k: args[k] for k in names if k in args}, **overrides})


def build_from_run(run_dir, data_dir, model_overrides=None, **train_overrides):
    """The method of a run folder rebuilt from its ``args.json`` alone (architecture, heads, DC3,
    the method's hyperparameters), on the dataset it trained on, in one process (strategy
    ``default``). Returns ``(method, args)``. For ``--eval_ckpt`` and ``scripts/export_model.py``:
    the checkpoint then restores into exactly the variables it was saved from."""
    import dataclasses
    from libml import dc3, io_utils, models, records, run_files, trainer
    from libml.errors import DC3Error
    args = io_utils.read_json(os.path.join(run_dir, run_files.ARGS_FILE), 'run arguments')
    by_class = {class_name: name for name, class_name in METHODS.items()}
    method = args.get('method')
    if method not in by_class:
        raise DC3Error(f'{run_dir}/{run_files.ARGS_FILE} names no known method ({method!r}); '
                       f'known: {", ".join(sorted(by_class))}')
    cls = method_class(by_class[method])
    info = records.load_dataset_info(data_dir, args['dataset_name'], args['dataset_seed'])
    run_files.check_same_data(run_dir, args.get('dataset_fingerprint'),
                              records.dataset_fingerprint(info.directory))
    train = _config_from_args(trainer.TrainConfig, args, **{
        'strategy': 'default', 'train_dir': os.path.dirname(os.path.dirname(run_dir)),
        **train_overrides})
    model = _config_from_args(models.ModelConfig, args, **(model_overrides or {}))
    dc3_config = (None if run_files.is_vanilla(args) or not cls.composes_with_dc3
                  else _config_from_args(dc3.DC3Config, args))
    params = {f.name: args[f.name] for f in dataclasses.fields(cls.Params)
              if f.init and f.name in args}
    # The global batch of the run (its replicas) decides the step count: keep the run's.
    replicas = int(args.get('replicas', 1))
    if replicas > 1:
        train = dataclasses.replace(train, batch=train.batch * replicas)
    return build(cls, info, args['labeled_size'], train, model, dc3_config, **params), args

"""Command-line flags, generated from the configuration dataclasses and read in one place.

The flags are the fields of ``TrainConfig`` (libml/trainer.py), ``ModelConfig`` (libml/models.py),
``DC3Config`` (libml/dc3.py) and of the method's own ``Params`` (its script): each field declares
its default and help text once (``libml.hparams.field``). Only ``run`` reads them; nothing under
``libml/`` does. Names follow FixMatch and the original DC3 code, so the paper's command lines
work unchanged. A method script is::

    if __name__ == '__main__':
        cli.main(MeanTeacher)
"""
import os

from absl import app, flags, logging

from libml import dc3, distribute, hparams, io_utils, methods, models, records, trainer
from libml.errors import DC3Error

FLAGS = flags.FLAGS
SHARED_CONFIGS = (trainer.TrainConfig, models.ModelConfig, dc3.DC3Config)
DC3_FLAGS = tuple(f.name for f in hparams.flag_fields(dc3.DC3Config))

flags.DEFINE_string('data_dir', None, 'Where generated datasets live (default $ML_DATA or ./data).')
flags.DEFINE_string('eval_ckpt', '', 'Only evaluate this checkpoint (RUN/ckpt/ckpt-N, without '
                    '.index); the run is rebuilt from RUN/args.json, other flags are ignored.')


def define_config_flags(config_cls):
    """One flag per field of ``config_cls`` (``libml.hparams.field``); a name that is already a
    flag keeps its definition and takes this field's default."""
    for f in hparams.flag_fields(config_cls):
        default = hparams.default_of(f)
        if f.name in FLAGS:
            FLAGS.set_default(f.name, default)
            continue
        help_text = f.metadata['help']
        if 'choices' in f.metadata:
            flags.DEFINE_enum(f.name, default, list(f.metadata['choices']), help_text)
        elif f.type in (int, 'int'):
            flags.DEFINE_integer(f.name, default, help_text)
        elif f.type in (float, 'float'):
            flags.DEFINE_float(f.name, default, help_text)
        else:
            flags.DEFINE_string(f.name, default, help_text)


for _config in SHARED_CONFIGS:
    define_config_flags(_config)


def config_from_flags(config_cls, **overrides):
    """``config_cls`` built from the flags of its fields."""
    values = {f.name: FLAGS[f.name].value for f in hparams.flag_fields(config_cls)}
    return config_cls(**{**values, **overrides})


def configs():
    """Reads the shared flags once into (TrainConfig, ModelConfig, DC3Config)."""
    return tuple(config_from_flags(c) for c in SHARED_CONFIGS)


def method_params(method_cls):
    """The method's own hyperparameters from its flags."""
    return {f.name: FLAGS[f.name].value for f in hparams.flag_fields(method_cls.Params)}


def build(method_cls, **params):
    """The method (with DC3 composed in when its flags enable it), ready to train."""
    train_config, model_config, dc3_config = configs()
    if not method_cls.composes_with_dc3:
        own = set(params)
        given = [name for name in DC3_FLAGS if FLAGS[name].present and name not in own]
        if given:
            raise DC3Error(f'{method_cls.method_name} does not compose with DC3; drop '
                           f'{", ".join("--" + n for n in given)}')
        dc3_config = None
    name, seed, size = records.parse_dataset_name(train_config.dataset)
    info = records.load_dataset_info(FLAGS.data_dir or records.default_data_dir(), name, seed)
    records.verify_dataset(info.directory)  # before any run folder exists (file sizes: cheap)
    explicit = {name for name in FLAGS if FLAGS[name].present}
    train_config = method_cls.adjust_train_config(train_config, params, explicit)
    return methods.build(method_cls, info, size, train_config, model_config, dc3_config,
                         **params)


def evaluate(checkpoint_path):
    """``--eval_ckpt RUN/ckpt/ckpt-N``: the run is rebuilt from ``RUN/args.json`` (its
    architecture, heads and hyperparameters), so no other flag is needed; ``--data_dir`` and
    ``--eval_batch`` apply, every other flag is ignored."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_path)))
    if not os.path.exists(os.path.join(run_dir, 'args.json')):
        raise DC3Error(f'--eval_ckpt {checkpoint_path}: no args.json in {run_dir}; give a '
                       'checkpoint inside its run folder, e.g. RUN/ckpt/ckpt-1000')
    method, _ = methods.build_from_run(run_dir, FLAGS.data_dir or records.default_data_dir(),
                                       eval_batch=FLAGS.eval_batch)
    return method.evaluate_checkpoint(checkpoint_path)


def run(method_cls, **params):
    """Trains, or evaluates ``--eval_ckpt``. A DC3Error (bad flag, missing dataset, diverged
    loss, ...) becomes one ``error:`` line on stderr and exit status 2."""
    def main(_):
        logging.set_verbosity(logging.WARNING)  # TF's checkpoint INFO lines drown the progress bar
        if FLAGS.eval_ckpt and FLAGS.strategy == 'multiworker':
            raise DC3Error('--eval_ckpt runs in one process; drop --strategy multiworker')
        if FLAGS.eval_ckpt:
            print(evaluate(FLAGS.eval_ckpt))
            return
        # Before any other op: a multi-worker strategy configures the runtime's collective ops.
        distribute.make_strategy(FLAGS.strategy)
        print(build(method_cls, **params).train())
    io_utils.run_cli(main)


def main(method_cls):
    """The whole ``__main__`` of a method script: its flags, their defaults, then ``run``."""
    define_config_flags(method_cls.Params)
    for name, value in method_cls.flag_defaults.items():
        FLAGS.set_default(name, value)
    app.run(lambda argv: run(method_cls, **method_params(method_cls)))


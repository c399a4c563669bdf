"""Every method by name, and the one way to build a method with DC3 composed in.

Used by ``cli.py`` (through ``build``), ``bench/``, ``tests/`` and ``scripts/run_ablation.py``. The
method classes live in their scripts at the repository root (FixMatch's layout), so the registry
names them and imports them when asked; the module itself imports no TensorFlow, so that
``scripts/run_ablation.py`` can list the methods quickly.
"""
import importlib

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

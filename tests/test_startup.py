"""A script's start: TensorFlow's C++ start-up lines are hidden (libml/tf_startup.py), and come back
with DC3_TF_LOGS=1; importing libml turns on oneDNN (libml/__init__.py)."""
import os
import subprocess
import sys

from tests.conftest import ROOT


def run(**env):
    clean = {k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'DC3_TF_LOGS')}
    # A dataset that does not exist: the script starts TensorFlow, then stops with one error line.
    return subprocess.run([sys.executable, 'mean_teacher.py', '--dataset', 'missing.1@-1-10',
                           '--data_dir', 'no-such-folder'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**clean, **env})


def test_a_script_prints_only_its_own_lines():
    result = run()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset 'missing'"), lines


def test_dc3_tf_logs_shows_tensorflows_lines_again():
    result = run(DC3_TF_LOGS='1')
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) > 1 and lines[-1].startswith("error: dataset 'missing'")


def onednn_in_a_fresh_process(*argv, **env):
    clean = {k: v for k, v in os.environ.items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
    probe = ('import libml, tensorflow\n'
             'from tensorflow.python.util import _pywrap_util_port\n'
             'print(_pywrap_util_port.IsMklEnabled())')
    result = subprocess.run([sys.executable, '-c', probe, *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=120,
                            env={**clean, 'TF_CPP_MIN_LOG_LEVEL': '2', **env})
    assert result.returncode == 0, result.stderr[-1000:]
    return result.stdout.strip().splitlines()[-1]


def test_importing_libml_turns_on_onednn_unless_the_user_decided():
    """TensorFlow leaves oneDNN off on AVX2-only CPUs (Eigen's convolutions, several times
    slower); importing libml before TensorFlow turns it on, and TF_ENABLE_ONEDNN_OPTS=0 wins."""
    assert onednn_in_a_fresh_process() == 'True'
    assert onednn_in_a_fresh_process(TF_ENABLE_ONEDNN_OPTS='0') == 'False'


def test_a_deterministic_command_line_keeps_tensorflows_kernels():
    import libml
    for argv, wanted in ((['--deterministic', '1'], True), (['--deterministic=1'], True),
                         (['--deterministic', '0'], False), (['--deterministic=0'], False),
                         (['--seed', '1'], False), (['--deterministic'], False)):
        assert libml._asks_for_determinism(argv) is wanted, argv
    assert onednn_in_a_fresh_process('--deterministic', '1') == 'False'
    # ... also when the environment says 1, as in a child of a process that imported libml
    # (the test suite itself): determinism wins.
    assert onednn_in_a_fresh_process('--deterministic', '1', TF_ENABLE_ONEDNN_OPTS='1') == 'False'

"""A script's start: TensorFlow's C++ start-up lines are hidden (libml/tf_startup.py), and come back
with DC3_TF_LOGS=1."""
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

"""``--strategy mirrored`` over two logical CPU devices gives the results of one device.

The training itself runs in tests/distribute_check.py, in a subprocess: logical devices must be
configured before TensorFlow starts, and this process has started it already.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import distribute_check
from tests.conftest import ROOT


@pytest.fixture(scope='module')
def runs(tiny_data_dir, tmp_path_factory):
    command = [sys.executable, '-m', 'tests.distribute_check', tiny_data_dir,
               str(tmp_path_factory.mktemp('distribute'))]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('case', sorted(distribute_check.CASES))
def test_mirrored_training_matches_one_device_with_the_global_batch(runs, case):
    one, mirrored = runs[case]['default'], runs[case]['mirrored']
    assert (one['replicas'], mirrored['replicas']) == (1, distribute_check.REPLICAS)
    np.testing.assert_allclose(mirrored['losses'], one['losses'], rtol=1e-5)
    assert len(one['weights']) == len(mirrored['weights'])
    for got, want in zip(mirrored['weights'], one['weights']):
        np.testing.assert_allclose(got, want, rtol=1e-4,
                                   atol=distribute_check.WEIGHT_ATOL[case])
    # Every replica holds the same values (weights, EMA, batch-norm statistics).
    assert mirrored['replica_spread'] == 0


def test_dc3_ranks_the_global_unlabeled_batch(runs):
    check = distribute_check
    global_unlabeled = check.BATCH * check.REPLICAS * check.URATIO
    expected = math.floor(global_unlabeled * check.PRIOR)
    assert expected != math.floor(check.BATCH * check.URATIO * check.PRIOR)  # per replica
    assert runs['dc3']['mirrored']['cutoffs'] == [expected] * distribute_check.STEPS
    assert runs['dc3']['default']['cutoffs'] == [expected] * distribute_check.STEPS


def test_mirrored_loop_counts_global_images_and_resumes(runs):
    train = runs['train']
    global_batch = distribute_check.BATCH * distribute_check.REPLICAS
    steps = distribute_check.STEPS + 1
    assert [(r['step'], r['images']) for r in train['reports']] == [(steps, steps * global_batch)]
    assert np.isfinite(train['reports'][-1]['splits']['val']['ema']['accuracy'])
    assert train['checkpoint'].endswith(f'ckpt-{steps}')
    assert train['args']['replicas'] == distribute_check.REPLICAS
    assert train['args']['strategy'] == 'mirrored' and train['args']['sync_bn'] == 1
    assert train['resumed_step'] == steps and train['resumed_equal']

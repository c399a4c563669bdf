"""scripts/export_model.py and scripts/predict.py: a trained run, used outside the training code.

The exported SavedModel is loaded by plain TensorFlow in a fresh process in which this repository
cannot be imported, and must give what the run's own final report gave for the same images.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from libml import dc3, methods, records, run_files
from tests.conftest import ROOT, TINY_CLASSES, make_method

ENV = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}

# Runs in a fresh process from an unrelated folder; any import of this repository's code fails.
LOADER = textwrap.dedent('''
    import json, sys
    import numpy as np
    sys.modules['libml'] = None   # `import libml` now raises ImportError
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    images = np.load(sys.argv[2])
    # Twice the size: the signature resizes any size to the training size.
    big = tf.image.resize(images, [2 * images.shape[1]] * 2, method='nearest')
    out = {k: v.numpy().tolist() for k, v in model.serve(tf.constant(images)).items()}
    out_big = model.serve(tf.cast(big, tf.uint8))
    out['big_output'] = out_big['output'].numpy().tolist()
    print(json.dumps(out))
''')


def script(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope='module')
def exported(tiny_data_dir, tmp_path_factory):
    """A tiny Mean Teacher + DC3 run (4 filters, 2 stages, 1 block: not the defaults), its final
    report, and its export."""
    work = tmp_path_factory.mktemp('export')
    cls = methods.method_class('mean_teacher')
    run_dir = make_method(cls, tiny_data_dir, work / 'runs', dc3.DC3Config(),
                          methods.params_defaults('mean_teacher')).train()
    out = str(work / 'model')
    result = script('scripts/export_model.py', '--run_dir', run_dir, '--out', out, '--data_dir',
                    tiny_data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    report = pd.read_csv(os.path.join(run_files.find_report(run_dir), 'val.csv'))
    val = records.read_split_numpy(os.path.join(tiny_data_dir, 'tiny.1'), 'val',
                                   len(TINY_CLASSES))
    return {'run_dir': run_dir, 'model': out, 'report': report, 'val': val, 'work': work}


def test_the_export_loads_without_this_repository_and_gives_the_reports_outputs(exported):
    images = os.path.join(str(exported['work']), 'val.npy')
    np.save(images, exported['val']['image'])
    loader = os.path.join(str(exported['work']), 'loader.py')
    with open(loader, 'w') as f:
        f.write(LOADER)
    result = subprocess.run([sys.executable, loader, exported['model'], images],
                            cwd=str(exported['work']), env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    report = exported['report']
    k = len(TINY_CLASSES)
    assert [str(p) for p in exported['val']['path']] == report['path'].tolist()
    np.testing.assert_allclose(out['class_probs'], report[[f'prob_{c}' for c in range(k)]],
                               atol=2e-5)
    np.testing.assert_allclose(out['ambiguity'], report['ambiguity'], atol=2e-5)
    clusters = [c for c in report.columns if c.startswith('cluster_prob_')]
    np.testing.assert_allclose(out['cluster_probs'], report[clusters], atol=2e-5)
    assert len(clusters) == 5 * k  # DC3's overclustering head (k' = 5 k)
    # DC3's rule: ambiguous images are clustered, the others classified.
    ambiguous = np.array(out['ambiguity']) >= 0.5
    assert out['is_ambiguous'] == ambiguous.tolist()
    assert out['output'] == np.where(ambiguous, out['cluster'], out['class']).tolist()
    assert out['output'] == report['output'].tolist()
    assert np.array(out['embedding']).shape[0] == len(report)
    # Nearest-neighbour upscaling then bilinear downscaling gives back nearly the same image.
    assert np.mean(np.array(out['big_output']) == np.array(out['output'])) > 0.8


def test_predict_writes_the_reports_columns_and_lists_unreadable_images(exported):
    folder = exported['work'] / 'images'
    (folder / 'nested').mkdir(parents=True)
    val = exported['val']
    names = []
    for i, image in enumerate(val['image']):
        name = f'nested/{i:03d}.png' if i % 2 else f'{i:03d}.png'
        Image.fromarray(image).save(folder / name)
        names.append(name)
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    (folder / 'notes.txt').write_text('not an image, not listed')
    out = exported['work'] / 'preds' / 'val.csv'
    result = script('scripts/predict.py', '--model', exported['model'], '--images', str(folder),
                    '--out', str(out), '--batch', '3')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'warning: unreadable image' in result.stderr and 'broken.jpg' in result.stderr
    assert f'predicted {len(names)} images, 1 unreadable' in result.stderr
    preds = pd.read_csv(out).set_index('path').loc[names]
    report = exported['report']
    assert list(pd.read_csv(out).columns) == list(report.columns)
    assert (preds['label'] == -1).all() and preds['soft_0'].isna().all()
    probs = [f'prob_{c}' for c in range(len(TINY_CLASSES))]
    np.testing.assert_allclose(preds[probs].to_numpy(), report[probs].to_numpy(), atol=2e-5)
    assert preds['output'].tolist() == report['output'].tolist()
    assert preds['output_kind'].tolist() == report['output_kind'].tolist()


@pytest.mark.parametrize('case', ['out_exists', 'not_a_run', 'missing_ckpt', 'no_images',
                                  'not_a_model'])
def test_bad_input_is_one_error_line(exported, tmp_path, case):
    empty = tmp_path / 'empty'
    empty.mkdir()
    command = {
        'out_exists': ['scripts/export_model.py', '--run_dir', exported['run_dir'], '--out',
                       exported['model']],
        'not_a_run': ['scripts/export_model.py', '--run_dir', str(empty), '--out',
                      str(tmp_path / 'm')],
        'missing_ckpt': ['scripts/export_model.py', '--run_dir', exported['run_dir'], '--ckpt',
                         '999', '--out', str(tmp_path / 'm')],
        'no_images': ['scripts/predict.py', '--model', exported['model'], '--images', str(empty),
                      '--out', str(tmp_path / 'p.csv')],
        'not_a_model': ['scripts/predict.py', '--model', str(empty), '--images', str(empty),
                        '--out', str(tmp_path / 'p.csv')],
    }[case]
    result = script(*command)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    assert not os.path.exists(tmp_path / 'm') and not os.path.exists(tmp_path / 'p.csv')
    assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]

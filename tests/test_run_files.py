"""The run folder's files (libml/run_files.py), written and read without a network."""
import json
import os

import numpy as np
import pandas as pd
import pytest

import mean_teacher
from libml import dc3, prediction_csv, run_files
from libml.errors import DC3Error
from tests.conftest import make_method


def predictions(n=5, k=3, clusters=7, with_dc3=True):
    rng = np.random.default_rng(n)
    soft = rng.dirichlet(np.ones(k), n).astype(np.float32)
    probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
    pred = {'path': np.array([f'a/{i}.png'.encode() for i in range(n)]), 'index': np.arange(n),
            'label': soft.argmax(1), 'soft_label': soft, 'probs': probs,
            'embedding': rng.normal(size=(n, 4)).astype(np.float32)}
    if with_dc3:
        pred['cluster_probs'] = rng.dirichlet(np.ones(clusters), n).astype(np.float32)
        pred['ambiguity'] = np.array([0.1, 0.5, 0.9, 0.49, 0.51][:n], np.float32)
    return pred


def test_report_folder_round_trip(tmp_path):
    pred = predictions()
    report_dir = tmp_path / 'run' / 'reports' / run_files.report_name(2048)
    run_files.write_report_folder(str(report_dir), {'val': pred}, {'images': 2048},
                                  embeddings=True)
    assert report_dir.name == 'img0000002048' and run_files.report_images(report_dir.name) == 2048
    assert run_files.find_report(str(tmp_path / 'run')) == str(report_dir)
    read = prediction_csv.read_predictions(str(report_dir / 'val.csv'))
    np.testing.assert_allclose(read['class_probs'], pred['probs'], rtol=1e-5)
    np.testing.assert_allclose(read['soft_labels'], pred['soft_label'], rtol=1e-5)
    np.testing.assert_array_equal(read['cluster_ids'], pred['cluster_probs'].argmax(1))
    # p_a >= 0.5 is clustered: the threshold is inclusive.
    assert list(read['frame']['output_kind']) == ['class', 'cluster', 'cluster', 'class', 'cluster']
    np.testing.assert_array_equal(np.load(report_dir / 'val_embeddings.npy'), pred['embedding'])
    assert json.loads((report_dir / 'metrics.json').read_text()) == {'images': 2048}
    assert not [p for p in os.listdir(report_dir.parent) if p.startswith('.')]  # no temp left


def test_vanilla_csv_has_no_ambiguity(tmp_path):
    path = str(tmp_path / 'val.csv')
    prediction_csv.write_predictions(path, 'val', predictions(with_dc3=False))
    read = prediction_csv.read_predictions(path)
    assert read['ambiguity'] is None
    np.testing.assert_array_equal(read['cluster_ids'], read['class_probs'].argmax(1))


def test_damaged_csv_is_one_error(tmp_path):
    path = tmp_path / 'val.csv'
    prediction_csv.write_predictions(str(path), 'val', predictions())
    pd.read_csv(path).drop(columns=['prob_1']).to_csv(path, index=False)
    with pytest.raises(DC3Error, match='lacks columns prob_1'):
        prediction_csv.read_predictions(str(path))
    path.write_text('')
    with pytest.raises(DC3Error, match='damaged'):
        prediction_csv.read_predictions(str(path))


def test_find_report_errors(tmp_path):
    with pytest.raises(DC3Error, match='no reports/img'):
        run_files.find_report(str(tmp_path))
    (tmp_path / 'reports' / 'img0000000512').mkdir(parents=True)
    (tmp_path / 'reports' / 'notes').mkdir()
    with pytest.raises(DC3Error, match='img0000000512'):
        run_files.find_report(str(tmp_path), 'img0000009999')


def test_metrics_jsonl_survives_a_torn_last_line(tmp_path, capsys):
    run_files.append_metrics(str(tmp_path), {'images': 1})
    with open(tmp_path / run_files.METRICS_FILE, 'a') as f:
        f.write('{"images": 2, "spl')  # the process died here
    assert run_files.read_metrics(str(tmp_path)) == [{'images': 1}]
    assert 'incomplete' in capsys.readouterr().err
    run_files.append_metrics(str(tmp_path), {'images': 3})
    assert run_files.read_metrics(str(tmp_path)) == [{'images': 1}, {'images': 3}]
    lines = (tmp_path / run_files.METRICS_FILE).read_text().splitlines()
    assert len(lines) == 2


def test_normalised_args_compare_old_and_new_vanilla_runs():
    new = {'method': 'MeanTeacher', 'lr': 0.03}
    old = {**new, 'combined_output': 0, 'wou': 0.0, 'wol': 0.0, 'wf': 0.1, 'ambiguity_rank': 'p_a'}
    assert run_files.normalised_args(old) == new
    dc3_run = {**new, 'combined_output': 4, 'wou': 10.0, 'wol': 10.0}
    assert run_files.normalised_args(dc3_run) == dc3_run
    assert run_files.is_vanilla(new) and not run_files.is_vanilla(dc3_run)


def test_vanilla_run_resumes_in_its_folder_of_the_older_naming(tiny_data_dir, tmp_path, capsys):
    hparams = {'consistency_weight': 50.0, 'warmup_pos': 0.4}
    first = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path, hparams=hparams)
    run_dir = first.train()
    assert '_co0_' not in os.path.basename(run_dir)
    # What the code before 2026-12-04 wrote for the same run: another name, DC3's fields.
    args = json.loads(open(os.path.join(run_dir, 'args.json')).read())
    args.update(dataclasses_asdict_vanilla())
    legacy = os.path.join(os.path.dirname(run_dir), 'MeanTeacher_co0_wol0_wou0_pA0.6_f4_old')
    os.rename(run_dir, legacy)
    with open(os.path.join(legacy, 'args.json'), 'w') as f:
        json.dump(args, f)
    again = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path, hparams=hparams)
    assert again.train() == legacy
    assert 'continuing in' in capsys.readouterr().err
    assert not os.path.exists(run_dir)
    # A DC3 run is never taken for it.
    other = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path, dc3.DC3Config(),
                        hparams)
    assert other.run_dir() != legacy


def dataclasses_asdict_vanilla():
    import dataclasses
    return dataclasses.asdict(dc3.DC3Config(combined_output=0, wou=0, wol=0))


def test_prepare_run_dir_refuses_another_run(tmp_path):
    path = str(tmp_path / 'run')
    run_files.prepare_run_dir(path, {'lr': 0.1, 'report_kimg': 1})
    run_files.prepare_run_dir(path, {'lr': 0.1, 'report_kimg': 2})  # operational: fine
    with pytest.raises(DC3Error, match=r'other hyperparameters \(lr\)'):
        run_files.prepare_run_dir(path, {'lr': 0.2, 'report_kimg': 2})


def test_a_run_refuses_to_continue_on_re_imported_data(tiny_data_dir, tmp_path):
    hparams = {'consistency_weight': 50.0, 'warmup_pos': 0.4}
    run_dir = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path,
                          hparams=hparams).train()
    args_path = os.path.join(run_dir, 'args.json')
    args = json.loads(open(args_path).read())
    assert len(args['dataset_fingerprint']) == 16
    with open(args_path, 'w') as f:  # as if the data had been re-imported since
        json.dump(dict(args, dataset_fingerprint='f' * 16), f)
    with pytest.raises(DC3Error, match='the dataset changed since'):
        make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path, hparams=hparams).train()

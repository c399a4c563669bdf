"""bench/keep_results.py: a kept run gives the same tables as its run folder, a restored one is
skipped by run_ablation, unfinished runs and interrupted copies do not count."""
import json
import os
import shutil

import pandas as pd
import pytest

from bench import ambiguity_curves, keep_results
from scripts import report, run_ablation
from tests.test_ambiguity_curves import fake_run


def read_args(run_dir):
    with open(os.path.join(run_dir, 'args.json')) as f:
        return json.load(f)


def test_kept_runs_give_the_same_rows_and_restored_ones_count_as_finished(tmp_path):
    runs, kept, fresh = tmp_path / 'runs', tmp_path / 'kept', tmp_path / 'fresh'
    finished = fake_run(runs, [(1024, 0.4), (2048, 0.5)])
    fake_run(runs, [(1024, 0.3)], name='MeanTeacher_killed')  # killed before its last report
    assert keep_results.keep(str(runs), str(kept)) == 1
    assert keep_results.keep(str(runs), str(kept)) == 0       # nothing new: nothing rewritten
    kept_run = kept / finished.relative_to(runs)
    assert not (kept_run / 'reports').exists()
    assert not (kept / 'cifar10n.1@-1-10' / 'MeanTeacher_killed').exists()
    # bench.ambiguity_curves and scripts/report.py read the kept run as they read the original
    assert (ambiguity_curves.report_rows(str(kept_run), 'val') ==
            ambiguity_curves.report_rows(str(finished), 'val'))
    columns = ['method', 'variant', 'images', 'finished', 'f1_certain', 'd_minus_f1']
    pd.testing.assert_frame_equal(report.collect_runs([str(kept)])[columns],
                                  report.collect_runs([str(finished)])[columns])
    # a new session: restored, the run is finished for run_ablation (which then skips it)
    assert keep_results.restore(str(kept), str(fresh)) == 1
    restored = fresh / finished.relative_to(runs)
    assert run_ablation.is_finished(str(restored), read_args(restored))
    assert keep_results.restore(str(kept), str(fresh)) == 0    # an existing folder is left alone


def test_a_copy_cut_short_is_not_a_kept_run_and_is_redone(tmp_path, monkeypatch):
    runs, kept = tmp_path / 'runs', tmp_path / 'kept'
    finished = fake_run(runs, [(1024, 0.4), (2048, 0.5)])
    real_copy = keep_results._copy

    def killed_at_metrics(src, dst):  # the process dies before metrics.jsonl, the last write
        if dst.endswith('metrics.jsonl'):
            raise KeyboardInterrupt
        real_copy(src, dst)
    monkeypatch.setattr(keep_results, '_copy', killed_at_metrics)
    try:
        keep_results.keep(str(runs), str(kept))
    except KeyboardInterrupt:
        pass
    kept_run = kept / finished.relative_to(runs)
    assert (kept_run / 'args.json').exists() and not (kept_run / 'metrics.jsonl').exists()
    assert keep_results.finished_runs(str(kept)) == []         # not restored, not in a table
    assert keep_results.restore(str(kept), str(tmp_path / 'fresh')) == 0
    monkeypatch.setattr(keep_results, '_copy', real_copy)
    assert keep_results.keep(str(runs), str(kept)) == 1         # the next keep completes it
    assert keep_results.finished_runs(str(kept)) == [(str(finished.relative_to(runs)),
                                                      str(kept_run))]
    # a retrained run (other metrics) replaces its kept copy; killed half-way, the copy of the
    # old training no longer counts (its rows would not match the new ones)
    shutil.rmtree(finished)
    fake_run(runs, [(1024, 0.1), (2048, 0.2)])
    monkeypatch.setattr(keep_results, '_copy', killed_at_metrics)
    with pytest.raises(KeyboardInterrupt):
        keep_results.keep(str(runs), str(kept))
    assert keep_results.finished_runs(str(kept)) == []
    monkeypatch.setattr(keep_results, '_copy', real_copy)
    assert keep_results.keep(str(runs), str(kept)) == 1
    assert ambiguity_curves.report_rows(str(kept_run), 'val')[-1]['F1'] == 20.0


def test_a_missing_folder_or_a_broken_kept_run_is_one_error_line(tmp_path, capsys):
    from libml import io_utils
    broken = tmp_path / 'kept' / 'cifar10n.1@-1-10' / 'MeanTeacher_x'
    broken.mkdir(parents=True)
    (broken / 'args.json').write_text('{"train_kimg": ')  # cut short
    for argv in (['keep', str(tmp_path / 'missing'), str(tmp_path / 'kept')],
                 ['restore', str(tmp_path / 'kept'), str(tmp_path / 'fresh')]):
        with pytest.raises(SystemExit) as exit_info:
            io_utils.run_cli(lambda _: keep_results.main(argv))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and err.count('\n') == 1
    assert not (tmp_path / 'fresh').exists()

"""Evaluation: predict every split with the raw and the EMA weights, compute the metrics, write
the report (``libml.run_files``), the TensorBoard scalars and one console line; after a resume,
the reports a crash left out (``complete_reports``)."""
import os
import sys

import numpy as np
import tensorflow as tf
import tqdm

from libml import data, metrics, prediction_csv, run_files, summaries

SPLITS = ('train', 'unlabeled', 'val', 'test')  # 'train' (the labeled images) first
MODELS = ('ema', 'raw')
CONSOLE_METRICS = ('accuracy', 'f1_certain', 'inner_distance', 'd_minus_f1', 'ambiguous_share')


def eval_datasets(method):
    """Ordered, cached evaluation passes over every split the method's dataset has."""
    return {split: data.eval_inputs(method.dataset, split, method.train_config.eval_batch)
            for split in SPLITS if method.dataset.has_split(split)}


def predict(method, dataset, which='ema'):
    """Runs one model over a split: dict of NumPy arrays (outputs and record fields)."""
    columns = {}
    for batch in dataset:
        out = method._predict[which](batch['image'])
        for name, value in list(out.items()) + [(k, batch[k]) for k in
                                                ('label', 'soft_label', 'path', 'index')]:
            columns.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def split_results(method, eval_sets):
    """``({split: {model: metrics}}, {split: EMA predictions})`` of every split."""
    results, predictions, labeled = {}, {}, {}
    for split, dataset in eval_sets.items():
        results[split] = {}
        for which in MODELS:
            pred = predict(method, dataset, which)
            if split == 'train':
                labeled[which] = pred
            results[split][which] = {
                **metrics.split_metrics(pred['label'], pred['soft_label'], pred['probs'],
                                        prediction_csv.cluster_ids(pred), pred.get('ambiguity')),
                **method.method_metrics(split, pred, labeled.get(which))}
            if which == 'ema':
                predictions[split] = pred
    return results, predictions


def write_summaries(writer, images, results):
    """Every numeric metric as a TensorBoard scalar ``<split>/<model>/<name>`` at ``images``, in
    the console's units (percent for accuracy, F1, d, ...: ``summaries.PERCENT_METRICS``)."""
    with writer.as_default(step=images):
        for split, per_model in results.items():
            for which, values in per_model.items():
                for name, value in values.items():
                    if value is not None and not isinstance(value, str):
                        tf.summary.scalar(f'{split}/{which}/{name}',
                                          summaries.in_console_units(name, float(value)))
    writer.flush()


def _fmt(value):
    return 'n/a' if value is None else f'{100 * value:.2f}' if isinstance(value, float) else value


def report(method, out_dir, step, eval_sets, writer=None, embeddings=False):
    """Evaluates raw and EMA weights on every split; writes metrics, CSVs and summaries."""
    images = step * method.global_batch
    result = {'images': images, 'kimg': images / 1024, 'step': step, 'splits': {}}
    result['splits'], predictions = split_results(method, eval_sets)
    if writer is not None:
        write_summaries(writer, images, result['splits'])
        summaries.write_report_images(writer, images, method.dataset, predictions)
        if embeddings and 'val' in predictions:
            summaries.write_projector(os.path.join(out_dir, 'tb'), 'val', predictions['val'],
                                      list(method.dataset.classes))
    report_dir = os.path.join(out_dir, run_files.REPORTS, run_files.report_name(images))
    run_files.write_report_folder(report_dir, predictions, {
        **result, 'classes': list(method.dataset.classes),
        'has_ambiguity_head': method.has_ambiguity_head,
        'num_clusters': method.num_clusters}, embeddings)
    run_files.append_metrics(out_dir, result)
    val = result['splits'].get('val', {}).get('ema', {})
    tqdm.tqdm.write(f'kimg {images / 1024:.1f}: ' + ' '.join(
        f'{k}={_fmt(val.get(k))}' for k in CONSOLE_METRICS), file=sys.stderr)
    return result


def report_steps(step, report_every, total_steps):
    """The steps up to ``step`` at which the loop writes a report."""
    steps = set(range(report_every, step + 1, report_every))
    if step >= total_steps:
        steps.add(total_steps)
    return sorted(steps)


def complete_reports(method, run_dir, manager, step, report_every, eval_sets, writer):
    """After a resume: writes the reports a crash left out (killed between a checkpoint and its
    report), from the checkpoints of their steps; the run's newest weights are restored after."""
    done_folders = {images for images, _ in run_files.report_folders(run_dir)}
    done_lines = {int(entry.get('images', -1)) for entry in run_files.read_metrics(run_dir)}
    complete = done_folders & done_lines
    # Reports are written in order, so a crash loses only those after the last complete one.
    last_complete = max(complete, default=0) // method.global_batch
    latest = manager.latest_checkpoint
    for report_step in report_steps(step, report_every, method.total_steps):
        images = report_step * method.global_batch
        if report_step <= last_complete or images in complete:
            continue
        path = os.path.join(os.path.dirname(latest), f'ckpt-{report_step}') if latest else None
        if report_step != step and not (path and tf.io.gfile.exists(path + '.index')):
            print(f'warning: the report at step {report_step} is missing and its checkpoint is '
                  'gone; it cannot be rewritten', file=sys.stderr)
            continue
        print(f'note: writing the report of step {report_step}, which an interrupted run left '
              'out', file=sys.stderr)
        if report_step != step:
            method.checkpoint.restore(path).expect_partial()
        report(method, run_dir, report_step, eval_sets, writer,
               embeddings=report_step == method.total_steps)
        if report_step != step:
            method.checkpoint.restore(latest).expect_partial()

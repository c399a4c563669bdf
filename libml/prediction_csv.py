"""The prediction CSV of a report: one row per image of a split (TensorFlow-free).

Written by every report (``run_files.write_report_folder``) and by ``scripts/predict.py``; read
by ``scripts/report.py``, the proposal export, the relabeling simulation and the metrics' own
check (``metrics_from_csv``). Its columns are listed in ``write_predictions``.
"""
import numpy as np
import pandas as pd

from libml import io_utils
from libml.errors import DC3Error
from libml.metrics import AMBIGUITY_THRESHOLD, split_metrics

# ---------------------------------------------------------------------------------------------

def cluster_ids(pred):
    """argmax p_o where the network has an overclustering head, else argmax p_n."""
    return np.argmax(pred.get('cluster_probs', pred['probs']), axis=1)


def write_predictions(path, split, pred):
    """One CSV row per image: record fields, soft label, p_n, cluster, p_a, final output and p_o.

    Columns: ``path, split, index, label, soft_0..k-1, prob_0..k-1, cluster, cluster_prob,
    ambiguity`` (empty without an ambiguity head), ``output_kind`` (class | cluster), ``output``
    and, with an overclustering head, ``cluster_prob_0..k'-1``.
    """
    probs = pred['probs']
    clusters = pred.get('cluster_probs', probs)
    ambiguity = pred.get('ambiguity')
    k = probs.shape[1]
    is_cluster = ((ambiguity >= AMBIGUITY_THRESHOLD) if ambiguity is not None
                  else np.zeros(len(probs), bool))
    frame = {'path': [p.decode('utf-8') if isinstance(p, bytes) else p for p in pred['path']],
             'split': split, 'index': pred['index'], 'label': pred['label']}
    frame.update({f'soft_{c}': pred['soft_label'][:, c] for c in range(k)})
    frame.update({f'prob_{c}': probs[:, c] for c in range(k)})
    frame['cluster'] = np.argmax(clusters, axis=1)
    frame['cluster_prob'] = np.max(clusters, axis=1)
    frame['ambiguity'] = ambiguity if ambiguity is not None else np.nan
    frame['output_kind'] = np.where(is_cluster, 'cluster', 'class')
    frame['output'] = np.where(is_cluster, frame['cluster'], np.argmax(probs, axis=1))
    if 'cluster_probs' in pred:
        # The full p_o (k' values), appended after the existing columns: the DCIC export needs
        # every cluster confidence, not only the argmax above.
        frame.update({f'cluster_prob_{j}': clusters[:, j] for j in range(clusters.shape[1])})
    with io_utils.atomic_path(path) as tmp:
        pd.DataFrame(frame).to_csv(tmp, index=False, float_format='%.6g')


def read_predictions(csv_path):
    """Reads a prediction CSV into arrays; ``ambiguity`` is None when its column is empty."""
    try:
        frame = pd.read_csv(csv_path)
    except FileNotFoundError:
        raise DC3Error(f'prediction file not found: {csv_path}') from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DC3Error(f'prediction file {csv_path} is damaged ({e}); rerun the report') from None
    num_classes = sum(c.startswith('soft_') for c in frame.columns)
    needed = ['path', 'label', 'cluster', 'ambiguity'] + [
        f'{p}_{i}' for p in ('soft', 'prob') for i in range(num_classes)]
    missing = [c for c in needed if c not in frame.columns]
    if missing or not num_classes:
        raise DC3Error(f'prediction file {csv_path} lacks columns {", ".join(missing) or "soft_*"}'
                       '; rerun the report')
    ambiguity = frame['ambiguity'].to_numpy(dtype=np.float64)
    return {
        'frame': frame,
        'labels': frame['label'].to_numpy(dtype=np.int64),
        'soft_labels': frame[[f'soft_{i}' for i in range(num_classes)]].to_numpy(np.float64),
        'class_probs': frame[[f'prob_{i}' for i in range(num_classes)]].to_numpy(np.float64),
        'cluster_ids': frame['cluster'].to_numpy(dtype=np.int64),
        'ambiguity': None if np.isnan(ambiguity).all() else ambiguity,
    }


def metrics_from_csv(csv_path):
    """``split_metrics`` recomputed from a prediction CSV (vanilla: ``ambiguity`` all empty)."""
    p = read_predictions(csv_path)
    return split_metrics(p['labels'], p['soft_labels'], p['class_probs'], p['cluster_ids'],
                         p['ambiguity'])

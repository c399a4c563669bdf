"""The files of a run folder, written and read in one place (TensorFlow-free, so scripts start fast).

    <train_dir>/<dataset>/<Method>_<key hyperparameters>_<hash>/     the run folder (``run_dir``)
        args.json                  everything that defines the run (``prepare_run_dir``)
        metrics.jsonl              one JSON line per report (``append_metrics``/``read_metrics``)
        ckpt/, tb/                 checkpoints, TensorBoard events
        reports/img<10 digits>/    one folder per report, named by the images seen:
            <split>.csv            predictions per image (``libml.prediction_csv``)
            <split>_embeddings.npy embeddings (final report)
            metrics.json           the report's metrics, classes and head sizes

Every file is written atomically (``libml.io_utils``): a reader sees the old or the new version.
"""
import contextlib
import hashlib
import json
import os
import socket
import sys
import time

import numpy as np

from libml import io_utils, prediction_csv
from libml.errors import DC3Error
from libml.run_args import ADDED_DEFAULTS, OPERATIONAL_KEYS

ARGS_FILE = 'args.json'
LOCK_FILE = 'run.lock'  # host and pid of the process training in the folder
METRICS_FILE = 'metrics.jsonl'
REPORTS = 'reports'
REPORT_PREFIX = 'img'
REPORT_METRICS_FILE = 'metrics.json'


# ---------------------------------------------------------------------------------------------
# The run folder and args.json
# ---------------------------------------------------------------------------------------------

def without_added_defaults(args):
    """``args`` without the keys added later that hold the value older code implied
    (``run_args.ADDED_DEFAULTS``): such a run is recorded and named as it was before the key."""
    return {k: v for k, v in args.items()
            if k not in ADDED_DEFAULTS or v != ADDED_DEFAULTS[k]}


def with_added_defaults(args):
    """``args`` with every key added later that it lacks set to the value older code implied: a
    run recorded before the key, as the current code would record it."""
    return {**ADDED_DEFAULTS, **args}


def args_digest(args):
    """8 hex digits of the hash of every non-operational key of ``args`` (keys added later at
    their implied value left out)."""
    defining = {k: v for k, v in without_added_defaults(args).items()
                if k not in OPERATIONAL_KEYS}
    return hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]


def check_same_data(path, recorded, current):
    """One error line when the run ``path`` trained on other TFRecords than the current ones."""
    if recorded and current and recorded != current:
        raise DC3Error(f'the dataset changed since {path} was trained (fingerprint {recorded}, now '
                       f'{current}: it was re-imported); use the data the run trained on, or train '
                       'a new run in another --train_dir')


def run_dir(train_dir, dataset, method_name, short, args):
    """``<train_dir>/<dataset>/<method_name>_<short>_<hash of args>``."""
    return os.path.join(train_dir, dataset, f'{method_name}_{short}_{args_digest(args)}')


def prepare_run_dir(path, args):
    """Creates the run folder (or checks an existing one holds the same run); writes args.json."""
    os.makedirs(path, exist_ok=True)
    args_path = os.path.join(path, ARGS_FILE)
    if os.path.exists(args_path):
        # Normalised: a vanilla run's args.json written before 2026-12-04 holds DC3's fields.
        old, new = normalised_args(io_utils.read_json(args_path, 'run arguments')), \
            normalised_args(args)
        check_same_data(path, old.get('dataset_fingerprint'), new.get('dataset_fingerprint'))
        changed = sorted(k for k in set(old) | set(new)
                         if k not in OPERATIONAL_KEYS and old.get(k) != new.get(k))
        if changed:
            raise DC3Error(f'{path} holds a run with other hyperparameters '
                           f'({", ".join(changed)}); use another --train_dir or delete it')
    io_utils.write_json(args_path, args)
    return path


# Vanilla runs of the code before 2026-12-04 recorded DC3's fields (with DC3 off) in args.json and
# named their folder <Method>_co0_wol0_wou0_pA<p>_...; these are the fields they may hold.
LEGACY_DC3_KEYS = frozenset((
    'combined_output', 'wou', 'wol', 'wf', 'ws', 'ceinv_labels', 'prob_gradient',
    'use_soft_prob', 'use_loss_rescale', 'prior_fuzzy_distribution', 'overcluster_factor',
    'ambiguity_rank', 'scale_labeled_ceinv', 'supervised_certainty', 'losses_version'))


def is_vanilla(args):
    """Whether run arguments (args.json, or flags) describe a run without DC3."""
    return not any(float(args.get(k) or 0) for k in ('combined_output', 'wou', 'wol'))


def normalised_args(args):
    """``args`` without DC3's fields when DC3 is off, so that a vanilla run recorded before
    2026-12-04 (with them) and one recorded since (without them) compare equal; and without the
    keys added later that hold their implied value (``without_added_defaults``)."""
    args = without_added_defaults(args)
    if not is_vanilla(args):
        return dict(args)
    return {k: v for k, v in args.items() if k not in LEGACY_DC3_KEYS}


def legacy_run_dir(parent, method_name, args):
    """The folder an earlier version named for the run ``args`` (DC3 off), or None.

    It matches when its args.json agrees with ``args`` on every defining key and holds, besides,
    only DC3's fields with DC3 off (no ambiguity head, no CE^-1).
    """
    if not os.path.isdir(parent):
        return None
    wanted = {k: v for k, v in without_added_defaults(args).items() if k not in OPERATIONAL_KEYS}
    for name in sorted(os.listdir(parent)):
        if not name.startswith(f'{method_name}_co0_'):
            continue
        path = os.path.join(parent, name, ARGS_FILE)
        try:
            with open(path, encoding='utf-8') as f:
                old = without_added_defaults(json.load(f))
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        extra = {k: v for k, v in old.items() if k not in wanted and k not in OPERATIONAL_KEYS}
        if (all(old.get(k) == v for k, v in wanted.items()) and set(extra) <= LEGACY_DC3_KEYS
                and is_vanilla(extra)):
            return os.path.dirname(path)
    return None



def resolve_run_dir(path, method_name, args):
    """``path``, or the folder an older version of this code named for the same run (DC3 off)
    where only that exists (``legacy_run_dir``)."""
    if os.path.exists(path):
        return path
    legacy = legacy_run_dir(os.path.dirname(path), method_name, args)
    if not legacy:
        return path
    print(f'note: continuing in {legacy}, the folder an earlier version of this code named for '
          'the same run', file=sys.stderr)
    return legacy

def _read_lock(path):
    try:
        with open(path, encoding='utf-8') as f:
            holder = json.load(f)
        return holder if {'host', 'pid'} <= set(holder) else None
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def run_lock(path):
    """Holds ``<path>/run.lock`` (naming this host and process) while the block runs.

    A second process on the same run folder stops with one error line. A lock left by a process
    that no longer runs on this host (killed, machine crashed) is taken over with a note; a lock
    of another host cannot be checked, so the error says how to remove it if it is stale.
    """
    os.makedirs(path, exist_ok=True)
    lock = os.path.join(path, LOCK_FILE)
    me = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.strftime(
        '%Y-%m-%d %H:%M:%S')}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            stale = holder is None or (holder['host'] == me['host']
                                       and not io_utils.pid_alive(int(holder['pid'])))
            if not stale:
                raise DC3Error(f'{path} is in use by process {holder["pid"]} on '
                               f'{holder["host"]} (since {holder.get("since", "?")}); wait for it '
                               f'to finish, or delete {lock} if that process is gone') from None
            who = (f'process {holder["pid"]} on {holder["host"]}' if holder
                   else 'an unreadable lock')
            print(f'note: {path}: taking over the lock of {who}, which no longer runs',
                  file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
            continue
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        break
    else:
        raise DC3Error(f'could not take the lock {lock}; another process keeps taking it')
    try:
        yield
    finally:
        holder = _read_lock(lock)
        if holder and holder['pid'] == me['pid'] and holder['host'] == me['host']:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

def report_name(images):
    """``img0000065536``: the folder of the report after ``images`` training images."""
    return f'{REPORT_PREFIX}{int(images):010d}'


def report_images(name):
    """The image count of a report folder name, or None if ``name`` is not one."""
    digits = name[len(REPORT_PREFIX):]
    return int(digits) if name.startswith(REPORT_PREFIX) and digits.isdigit() else None


def report_folders(run_dir_):
    """``[(images, path)]`` of the run's report folders, by image count."""
    reports_dir = os.path.join(run_dir_, REPORTS)
    if not os.path.isdir(reports_dir):
        return []
    found = [(report_images(d), os.path.join(reports_dir, d)) for d in os.listdir(reports_dir)]
    return sorted((images, path) for images, path in found if images is not None)


def find_report(run_dir_, report='latest'):
    """Path of ``<run_dir>/reports/<report>``; ``latest`` is the one with the most images."""
    available = report_folders(run_dir_)
    if not available:
        raise DC3Error(f'{run_dir_} has no {REPORTS}/{REPORT_PREFIX}* folder yet; train until the '
                       'first report')
    if report == 'latest':
        return available[-1][1]
    for _, path in available:
        if os.path.basename(path) == report:
            return path
    raise DC3Error(f'report {report!r} not found in {os.path.join(run_dir_, REPORTS)}; available: '
                   f'{", ".join(os.path.basename(p) for _, p in available)}')


def write_report_folder(report_dir, split_predictions, report_metrics, embeddings=False):
    """The report folder in one atomic step: a CSV (and embeddings) per split, metrics.json."""
    with io_utils.atomic_path(report_dir) as tmp:
        os.makedirs(tmp)
        for split, pred in split_predictions.items():
            prediction_csv.write_predictions(os.path.join(tmp, f'{split}.csv'), split, pred)
            if embeddings:
                np.save(os.path.join(tmp, f'{split}_embeddings.npy'),
                        pred['embedding'].astype(np.float32))
        io_utils.write_json(os.path.join(tmp, REPORT_METRICS_FILE), report_metrics)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------

def append_metrics(run_dir_, result):
    """Appends one report's line to metrics.jsonl, flushed to disk before returning.

    A process killed mid-write can leave a torn last line: ``read_metrics`` skips it, and the
    next append first removes it, so it never ends up between two reports.
    """
    path = os.path.join(run_dir_, METRICS_FILE)
    _drop_torn_last_line(path)
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(result, sort_keys=True) + '\n')
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_last_line(path):
    if not os.path.exists(path):
        return
    with open(path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if not lines:
        return
    try:
        json.loads(lines[-1])
        if text.endswith('\n'):
            return
        kept = text + '\n'  # a complete last report without its newline
    except json.JSONDecodeError:
        kept = ''.join(lines[:-1])
        print(f'note: {path}: removed an incomplete last line (a crash while writing)',
              file=sys.stderr)
    io_utils.write_text(path, kept)


def read_metrics(run_dir_):
    """The report lines of metrics.jsonl (empty if the file is missing), in file order.

    A last line that is not valid JSON is a write cut short by a crash: skipped with a warning
    (the next report appends after it). A damaged line before others is an error.
    """
    path = os.path.join(run_dir_, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    entries = []
    for i, (number, line) in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise DC3Error(f'{path} line {number} is not valid JSON ({e}); fix or remove '
                               'that line') from None
            print(f'warning: {path} line {number} is incomplete (a crash while writing?); '
                  'skipped', file=sys.stderr)
    return entries

"""Where a run folder keeps its files (TensorFlow-free, so the report scripts start fast).

    <run_dir>/args.json                    the flags the run was started with
    <run_dir>/reports/img<10 digits>/      one folder per report, named by the images seen:
        <split>.csv, <split>_embeddings.npy, metrics.json
"""
import os

from libml.errors import DC3Error

REPORTS = 'reports'
REPORT_PREFIX = 'img'


def find_report(run_dir, report='latest'):
    """Path of ``<run_dir>/reports/<report>``; ``latest`` is the one with the most images."""
    reports_dir = os.path.join(run_dir, REPORTS)
    available = sorted(d for d in os.listdir(reports_dir) if d.startswith(REPORT_PREFIX)
                       and d[len(REPORT_PREFIX):].isdigit()) if os.path.isdir(reports_dir) else []
    if not available:
        raise DC3Error(f'{run_dir} has no {REPORTS}/{REPORT_PREFIX}* folder yet; train until the '
                       'first report')
    if report == 'latest':
        return os.path.join(reports_dir, max(available, key=lambda d: int(d[len(REPORT_PREFIX):])))
    if report not in available:
        raise DC3Error(f'report {report!r} not found in {reports_dir}; available: '
                       f'{", ".join(available)}')
    return os.path.join(reports_dir, report)

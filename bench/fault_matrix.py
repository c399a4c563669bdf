"""The fault matrix of issue #20: every fault test, run and counted per class of fault.

The matrix is the fault tests themselves (bad input, full disk, kill -9, damaged files, two
processes, ...): each asserts the clean outcome (one ``error:`` line and exit 2, or recovery with a
note) and that nothing is lost or half-written. This runs them through pytest and prints, per
class, how many cases there are and how many are handled cleanly, as a Markdown table.

    python -m bench.fault_matrix [--out bench/out/fault_matrix.md]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

from libml import io_utils

# (class of fault, test file, substrings of test names; empty: every test of the file)
CLASSES = [
    ('datasets: folder swaps, multi-seed imports, leftovers', 'tests/test_data_faults.py',
     ('rename', 'swap', 'seed_2', 'killed_import', 'leftovers', 'inside_the_block')),
    ('datasets: truncated or altered TFRecords', 'tests/test_data_faults.py',
     ('record', 'size_and_checksum', 'flipped', 'without_sizes')),
    ('datasets: labels and votes', 'tests/test_data_faults.py',
     ('label', 'class_folders', 'rare', 'pinned', 'annotator')),
    ('datasets: disk full, file-size limit, links, FIFOs, huge images', 'tests/test_data_faults.py',
     ('full_disk', 'file_size', 'symlink', 'linked', 'fifo', 'huge')),
    ('importer: malformed input (fuzzed)', 'tests/test_importer_fuzz.py', ()),
    ('runs: kill -9, lost reports, locks, damaged checkpoints and data',
     'tests/test_crash_recovery.py', ()),
    ('runs: killed process resumes', 'tests/test_training.py', ('killed',)),
    ('runs: metrics.jsonl, prediction CSVs, args.json, re-imported data',
     'tests/test_run_files.py', ()),
    ('runs: NaN loss, bad flags, OS errors', 'tests/test_reliability.py', ()),
    ('several workers: kill -9 of one, NaN on all, TF_CONFIG refused, bad clusters, launcher',
     'tests/test_multiworker.py',
     ('killed', 'non_finite', 'refused', 'cannot_be_resolved', 'launcher')),
]


TRAINING = 'tests/test_training.py'


def run_pytest(files):
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = os.path.join(tmp, 'results.xml')
        subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                        f'--junitxml={xml_path}', *files], check=False)
        cases = []
        for case in ElementTree.parse(xml_path).getroot().iter('testcase'):
            outcome = ('skipped' if case.find('skipped') is not None else
                       'failed' if case.find('failure') is not None or case.find('error')
                       is not None else 'passed')
            cases.append((case.get('classname', '').replace('.', '/') + '.py', case.get('name'),
                          outcome))
        return cases


def tally(cases):
    rows, counted = [], set()
    for name, path, keys in CLASSES:
        mine = [c for c in cases if c[0] == path and c not in counted
                and (not keys or any(k in c[1] for k in keys))]
        counted.update(mine)
        rows.append((name, path, len(mine), sum(c[2] == 'passed' for c in mine),
                     [c[1] for c in mine if c[2] == 'failed']))
    return rows


def markdown(rows):
    lines = ['| class of fault | tests | cases | handled cleanly | failing |', '|---|---|---|---|---|']
    for name, path, total, passed, failing in rows:
        lines.append(f'| {name} | `{path}` | {total} | {passed} | {", ".join(failing) or "—"} |')
    total = sum(r[2] for r in rows)
    passed = sum(r[3] for r in rows)
    lines.append(f'| **all** | | **{total}** | **{passed}** | |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='bench/out/fault_matrix.md')
    args = parser.parse_args(argv)
    # Whole files, except where a class names its tests (then only those run).
    files = sorted({path for _, path, keys in CLASSES if not keys or path != TRAINING})
    files.append(f'{TRAINING}::test_killed_run_resumes_from_its_last_checkpoint')
    table = markdown(tally(run_pytest(files)))
    io_utils.write_text(args.out, table)
    print(table)


if __name__ == '__main__':
    io_utils.run_cli(main)

"""Crash-safe file output: everything is written to a temporary name first, then renamed.

A rename within one file system is atomic on POSIX, so readers (and a restarted run) see either the
old file or the complete new one, never a half-written file.
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile

from libml.errors import DC3Error


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to ``path``; renames it onto ``path`` if the block succeeds.

    Works for files and directories. On failure the temporary is removed and ``path`` is untouched.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.tmp-', dir=parent)
    target = os.path.join(tmp, 'out')
    try:
        yield target
        if os.path.isdir(path) and not os.path.islink(path):
            # Directories cannot be replaced in one rename: move the old one aside first.
            old = os.path.join(tmp, 'old')
            os.rename(path, old)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path, text):
    """Atomically writes ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)


def write_json(path, obj):
    """Atomically writes ``obj`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def read_json(path, what='file'):
    """Reads a JSON file, turning a missing or malformed file into a one-line DC3Error."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise DC3Error(f'{what} not found: {path}') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DC3Error(f'{what} is not valid JSON: {path} ({e}); fix or regenerate it') from None


def run_cli(main_fn, argv=None):
    """Runs ``main_fn(argv)`` and reports a DC3Error as one line on stderr with exit status 2."""
    try:
        return main_fn(argv)
    except DC3Error as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)

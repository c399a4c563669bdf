"""Crash-safe file output: everything is written to a temporary name first, then renamed.

A rename within one file system is atomic on POSIX, so readers (and a restarted run) see either the
old file or the complete new one, never a half-written file. A folder cannot be replaced in one
rename, so the old folder is first renamed to a recognisable sibling
(``.<name>.old-<pid>@<host>-…``) and removed only after the new one is in place; if the process
dies in between, the next write of the same path (or ``recover``) puts the old copy back.
Temporary folders (``.<name>.tmp-<pid>@<host>-…``) left by a killed process are removed the same
way.
"""
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time

from libml.errors import DC3Error

# A leftover whose owner cannot be checked (another host, or written before owners were recorded)
# is taken for abandoned once it is this old.
STALE_AFTER_SECONDS = 24 * 3600
_LEFTOVER_RE = re.compile(r'^\.(?P<base>.+)\.(?P<kind>tmp|old)-'
                          r'(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9.]*)-)?[A-Za-z0-9_]+$')


def _host():
    return re.sub(r'[^A-Za-z0-9.]', '', socket.gethostname())[:40]


def _owner_tag():
    return f'{os.getpid()}@{_host()}'


def pid_alive(pid):
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True         # exists, owned by another user
    except OSError:
        return False
    return True


def _is_stale(full_path, match):
    """True if the process that made this leftover is gone (same host) or it is old."""
    try:
        age = time.time() - os.lstat(full_path).st_mtime
    except FileNotFoundError:
        return False
    if match.group('pid') is not None and match.group('host') == _host():
        return not pid_alive(int(match.group('pid'))) or age > STALE_AFTER_SECONDS
    return age > STALE_AFTER_SECONDS


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def recover(path=None, parent=None):
    """Cleans up after interrupted writes of ``path`` (or of anything in folder ``parent``).

    A stale backup of a folder whose new copy never arrived is renamed back; one whose new copy is
    in place is removed; stale temporaries are removed. Leftovers of live processes are left alone.
    Prints one ``note:`` line when it did something; returns the list of actions.
    """
    if path is not None:
        path = os.path.abspath(path)
        parent, only_base = os.path.dirname(path), os.path.basename(path)
    else:
        parent, only_base = os.path.abspath(parent), None
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    actions = []
    backups, temporaries = [], []
    for name in names:
        match = _LEFTOVER_RE.match(name)
        if not match or (only_base is not None and match.group('base') != only_base):
            continue
        full = os.path.join(parent, name)
        if _is_stale(full, match):
            (backups if match.group('kind') == 'old' else temporaries).append((full, match))
    # Newest backup first: it is the copy that was in place most recently.
    backups.sort(key=lambda item: os.lstat(item[0]).st_mtime, reverse=True)
    for full, match in backups:
        target = os.path.join(parent, match.group('base'))
        try:
            if not os.path.lexists(target):
                os.rename(full, target)
                actions.append(f'restored {target} from {os.path.basename(full)}')
            else:
                _remove(full)
                actions.append(f'removed the superseded copy {os.path.basename(full)}')
        except OSError:
            continue            # best effort: the next call tries again
    for full, _ in temporaries:
        _remove(full)
        if not os.path.lexists(full):
            actions.append(f'removed the abandoned temporary {os.path.basename(full)}')
    if actions:
        print(f'note: cleaned up after an interrupted write in {parent}: ' + '; '.join(actions),
              file=sys.stderr)
    return actions


def _swap_in(target, path):
    """Moves ``target`` onto ``path``; returns the backup name of an old folder (or None)."""
    if os.path.isdir(path) and not os.path.islink(path):
        parent, base = os.path.split(path)
        backup = os.path.join(parent, f'.{base}.old-{_owner_tag()}-{secrets.token_hex(4)}')
        os.rename(path, backup)
        try:
            os.rename(target, path)
        except BaseException:
            os.rename(backup, path)     # put the old folder back before reporting the failure
            raise
        return backup
    os.replace(target, path)
    return None


@contextlib.contextmanager
def atomic_paths(paths):
    """Yields one temporary path per entry of ``paths``; moves them all into place if the block
    succeeds (a staged commit: nothing is replaced until every output is complete).

    Works for files and folders. On failure every temporary is removed and each ``path`` keeps its
    old content; if moving the outputs in fails part-way, the folders already swapped get their old
    copies back. An old folder is deleted only after its replacement is in place.
    """
    paths = [os.path.abspath(p) for p in paths]
    temporaries = []
    try:
        for path in paths:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            recover(path)
            temporaries.append(tempfile.mkdtemp(
                prefix=f'.{os.path.basename(path)}.tmp-{_owner_tag()}-', dir=parent))
        targets = [os.path.join(tmp, 'out') for tmp in temporaries]
        yield targets
        done = []           # (path, target, backup) already moved in
        try:
            for path, target in zip(paths, targets):
                done.append((path, target, _swap_in(target, path)))
        except BaseException:
            # Undo the swaps made so far (folders only; a replaced file cannot be undone).
            for path, target, backup in reversed(done):
                if backup is not None:
                    with contextlib.suppress(OSError):
                        os.rename(path, target)
                        os.rename(backup, path)
            raise
        for _, _, backup in done:
            if backup is not None:
                _remove(backup)
    finally:
        for tmp in temporaries:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to ``path``; renames it onto ``path`` if the block succeeds.

    Works for files and directories. On failure the temporary is removed and ``path`` is untouched.
    """
    with atomic_paths([path]) as (target,):
        yield target


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
    """Runs ``main_fn(argv)`` and reports a DC3Error, or an error of the file system (no
    permission, disk full, file too large, ...), as one line on stderr with exit status 2."""
    try:
        return main_fn(argv)
    except DC3Error as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        where = f': {e.filename}' if e.filename else ''
        print(f'error: {e.strerror or e}{where}; check the path, its permissions and the free '
              'space', file=sys.stderr)
        sys.exit(2)

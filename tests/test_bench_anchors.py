"""bench/anchors.py runs the issue's probe scripts as the issue ran them (BENCHMARKS §2).

The probes themselves live outside the repository, so stand-ins with the same command-line
interface report back what they were given: the img/s they print encodes their arguments and, for
the Keras probe, the mixed-precision policy in force when the script ran.
"""
import pytest

from bench import anchors

FAKE_TF = '''import sys
import keras
bf16 = keras.mixed_precision.global_policy().name == 'mixed_bfloat16'
filters, size = int(sys.argv[1]), int(sys.argv[2])
print('filters=%d size=%d step 9 ms, %d img/s' % (filters, size, (filters + size) * (2 if bf16 else 1)))
'''
FAKE_TORCH = '''import sys
filters, size = int(sys.argv[1]), int(sys.argv[2])
print('params 1')
print('torch step 9 ms %d img/s' % ((filters + size) * (2 if 'bf16' in sys.argv[3:] else 1)))
'''


@pytest.fixture
def perf_dir(tmp_path):
    (tmp_path / 'step_tf.py').write_text(FAKE_TF)
    (tmp_path / 'step_torch.py').write_text(FAKE_TORCH)
    return str(tmp_path)


@pytest.mark.parametrize('script', ['step_torch.py', 'step_tf.py'])
def test_probes_get_the_network_size_and_bf16_only_when_asked(perf_dir, script):
    fp32 = anchors.run_probe(anchors.probe_command(perf_dir, script, 'fp32', 4, 8), script)
    bf16 = anchors.run_probe(anchors.probe_command(perf_dir, script, 'bf16', 4, 8), script)
    assert (fp32, bf16) == (12.0, 24.0)


def test_the_last_img_per_s_of_a_probe_is_read():
    assert anchors.parse_probe_output('warm-up 1.5 img/s\nstep 401 ms 479.5 img/s\n') == 479.5
    with pytest.raises(ValueError, match='img/s'):
        anchors.parse_probe_output('params 1\n')


def test_a_failing_probe_is_one_line_naming_it(tmp_path):
    (tmp_path / 'step_torch.py').write_text('raise SystemExit("no torch here")\n')
    command = anchors.probe_command(str(tmp_path), 'step_torch.py', 'bf16', 4, 8)
    with pytest.raises(SystemExit, match=r'^anchors: step_torch.py failed: no torch here$'):
        anchors.run_probe(command, 'step_torch.py')


def test_a_missing_probe_directory_is_one_line_before_anything_runs(tmp_path, capsys):
    (tmp_path / 'step_tf.py').write_text('raise SystemExit(3)\n')  # must not be run
    with pytest.raises(SystemExit) as exit_info:
        anchors.main(['--perf_dir', str(tmp_path), '--out', str(tmp_path / 'out.json')])
    assert 'step_torch.py not found in --perf_dir' in str(exit_info.value)
    assert 'step_tf.py' not in str(exit_info.value)
    assert not (tmp_path / 'out.json').exists()

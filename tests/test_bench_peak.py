"""bench/peak.py: the CPU's peak by formula and by measurement (BENCHMARKS §14 part 9)."""
import shutil

import pytest

from bench import peak


def cpu(vendor, family, *flags, mhz=2000.0):
    return {'vendor': vendor, 'family': family, 'model_name': 'test', 'flags': set(flags),
            'mhz': mhz}


@pytest.mark.parametrize('info, fp32, bf16', [
    # Zen 3: two 256-bit FMA pipes, no bf16 units
    (cpu('AuthenticAMD', 25, 'avx2', 'fma'), 32, 32),
    # Zen 4: AVX-512 on the same two 256-bit pipes; vdpbf16ps does twice an FMA's work
    (cpu('AuthenticAMD', 25, 'avx2', 'fma', 'avx512f', 'avx512_bf16'), 32, 64),
    # Zen 5: full-width 512-bit pipes
    (cpu('AuthenticAMD', 26, 'avx2', 'fma', 'avx512f', 'avx512_bf16'), 64, 128),
    # Ice Lake Xeon: two 512-bit FMA units, no bf16
    (cpu('GenuineIntel', 6, 'avx2', 'fma', 'avx512f'), 64, 64),
    # Sapphire Rapids: AMX tiles, 1024 bf16 FLOPs per cycle
    (cpu('GenuineIntel', 6, 'avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16'), 64, 1024),
])
def test_flops_per_cycle_follow_the_vector_units(info, fp32, bf16):
    assert peak.flops_per_cycle(info) == {'fp32': fp32, 'bf16': bf16}


def fake_measure(per_core):
    return lambda seconds=0.5: {name: {'per_core': [v, v], 'total': 2 * v}
                                for name, v in per_core.items()}


def test_measured_peak_and_the_clock_it_implies(monkeypatch):
    monkeypatch.setattr(peak.os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(peak, 'cpuinfo', lambda: cpu('AuthenticAMD', 25, 'fma', 'avx512f',
                                                     'avx512_bf16', mhz=2500.0))
    monkeypatch.setattr(peak, 'measure', fake_measure(
        {'fma_ymm_fp32': 110.0, 'fma_zmm_fp32': 112.0, 'dpbf16_zmm_bf16': 224.0}))
    fp32, bf16 = (peak.peak()['precisions'][p] for p in ('fp32', 'bf16'))
    assert fp32['formula_gflops'] == pytest.approx(2 * 2.5 * 32)
    assert fp32['peak_gflops'] == pytest.approx(224.0)  # the faster fp32 kernel, both cores
    assert fp32['effective_ghz'] == pytest.approx(224.0 / (2 * 32))
    assert bf16['peak_gflops'] == pytest.approx(448.0)
    assert bf16['effective_ghz'] == pytest.approx(448.0 / (2 * 64))


def test_without_bf16_units_bf16_runs_at_the_fp32_peak(monkeypatch):
    monkeypatch.setattr(peak.os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(peak, 'cpuinfo', lambda: cpu('AuthenticAMD', 25, 'fma', mhz=2445.0))
    monkeypatch.setattr(peak, 'measure', fake_measure({'fma_ymm_fp32': 100.0}))
    result = peak.peak()['precisions']
    assert result['bf16']['peak_gflops'] == result['fp32']['peak_gflops'] == pytest.approx(200.0)
    assert result['bf16']['source'] == 'fp32 (no bf16 units)'


def test_amx_bf16_peak_is_the_formula(monkeypatch):
    monkeypatch.setattr(peak.os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(peak, 'cpuinfo', lambda: cpu('GenuineIntel', 6, 'fma', 'avx512f',
                                                     'avx512_bf16', 'amx_bf16', mhz=2000.0))
    monkeypatch.setattr(peak, 'measure', fake_measure(
        {'fma_zmm_fp32': 256.0, 'dpbf16_zmm_bf16': 512.0}))
    bf16 = peak.peak()['precisions']['bf16']
    assert bf16['source'] == 'formula'  # the kernel has no tile code: its number would be too low
    assert bf16['peak_gflops'] == pytest.approx(2 * 2.0 * 1024)


@pytest.mark.skipif(shutil.which('cc') is None and shutil.which('gcc') is None,
                    reason='no C compiler')
def test_the_kernel_runs_what_the_cpu_has(tmp_path):
    flags = peak.cpuinfo()['flags']
    kernels = peak.measure(seconds=0.01, out_dir=str(tmp_path))
    expected = set()
    if {'avx2', 'fma'} <= flags:
        expected.add('fma_ymm_fp32')
    if 'avx512f' in flags:
        expected.add('fma_zmm_fp32')
    if {'avx512f', 'avx512_bf16'} <= flags:
        expected.add('dpbf16_zmm_bf16')
    assert set(kernels) == expected
    for result in kernels.values():
        assert len(result['per_core']) == peak.os.cpu_count()
        assert all(v > 0 for v in result['per_core'])
        assert result['total'] == pytest.approx(sum(result['per_core']))


@pytest.mark.skipif(shutil.which('cc') is None and shutil.which('gcc') is None,
                    reason='no C compiler')
def test_a_compile_error_is_one_line_and_leaves_no_binary(tmp_path, monkeypatch):
    source = tmp_path / 'broken.c'
    source.write_text('int main(void) { return undefined_name; }\n')
    monkeypatch.setattr(peak, 'SOURCE', str(source))
    with pytest.raises(RuntimeError, match='compiling .*broken.c failed: .*undefined_name'):
        peak.build(str(tmp_path / 'out'))
    assert not [f for f in (tmp_path / 'out').iterdir() if not f.name.endswith('.tmp')]

"""The CPU's fp32 and bf16 peak: lscpu's formula and a measurement (benchmark-only, #21).

    python -m bench.peak [--seconds 0.5]

Two numbers per precision, because they differ on every machine we ran on:

* **formula** = cores x clock x FLOPs per cycle, with the clock /proc/cpuinfo (lscpu) reports —
  under a hypervisor that is the nominal (TSC) clock, not the one the cores run at — and the FLOPs
  per cycle of the vector units (``flops_per_cycle``: two 256-bit FMA pipes = 32 fp32 FLOPs; 64
  with two 512-bit ones; bf16 twice that with AVX-512 BF16's dot product, 1024 with AMX);
* **measured** = ``bench/peak_fma.c`` (compiled here with the system's C compiler into bench/out/)
  run on every core at once: independent chains of FMAs (and of bf16 dot products where the CPU has
  them) that nothing but the vector units limits. Its quotient by cores x FLOPs per cycle is the
  clock the cores really ran at.

Measure on a quiet machine: a job on another core lowers the measured peak as it slows a step.
Shares of peak in BENCHMARKS.md are against the measured peak (the tighter, i.e. larger, one where
the cores boost above the nominal clock). AMX is not measured (the kernel has no tile code): on an
AMX machine the bf16 row is the formula's.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys

from bench import cpuinfo
from libml import io_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, 'bench', 'peak_fma.c')
# The kernel that measures each precision; bf16 falls back to fp32 on CPUs without bf16 units
# (their bf16 convolutions run in fp32 arithmetic).
KERNELS = {'fp32': ('fma_zmm_fp32', 'fma_ymm_fp32'), 'bf16': ('dpbf16_zmm_bf16',)}


def flops_per_cycle(info):
    """Per core and cycle, fp32 and bf16 (FMA = 2 FLOPs), from the vendor, family and flags.

    fp32: Intel cores with AVX-512 have two 512-bit FMA units (64; some low-end Xeons have one);
    AMD before Zen 5 (family 26) executes AVX-512 on two 256-bit pipes (32), as AVX2 cores do.
    bf16: AMX's tile unit 1024; AVX-512 BF16's vdpbf16ps adds two products per fp32 lane, twice the
    fp32 FMA's work per instruction; without either, bf16 math runs as fp32.
    """
    flags = info['flags']
    if 'avx512f' in flags and (info['vendor'] == 'GenuineIntel' or info['family'] >= 26):
        fp32 = 64
    elif 'fma' in flags:
        fp32 = 32
    else:
        fp32 = 8
    if 'amx_bf16' in flags:
        bf16 = 1024
    elif 'avx512_bf16' in flags:
        bf16 = 2 * fp32
    else:
        bf16 = fp32
    return {'fp32': fp32, 'bf16': bf16}


def build(out_dir):
    """Compiles peak_fma.c into out_dir once per source version; returns the binary's path."""
    compiler = shutil.which(os.environ.get('CC', 'cc')) or shutil.which('gcc')
    if compiler is None:
        raise RuntimeError('bench.peak: no C compiler (set CC or install gcc) to build '
                           f'{os.path.relpath(SOURCE, ROOT)}')
    with open(SOURCE, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    binary = os.path.join(out_dir, f'peak_fma_{digest}')
    if not os.path.exists(binary):
        os.makedirs(out_dir, exist_ok=True)
        done = subprocess.run([compiler, '-O3', '-o', binary + '.tmp', SOURCE],
                              capture_output=True, text=True)
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if 'error:' in line] or [
                f'{compiler} exited with {done.returncode}']
            raise RuntimeError(f'bench.peak: compiling {os.path.relpath(SOURCE, ROOT)} failed: '
                               f'{errors[0].strip()} (a compiler with AVX-512 BF16 intrinsics, '
                               'gcc >= 10 or clang >= 11, is needed)')
        os.replace(binary + '.tmp', binary)
    return binary


def measure(seconds=0.5, out_dir=os.path.join(ROOT, 'bench', 'out')):
    """GFLOP/s of each kernel, one copy per core running at once: {kernel: (per core, total)}."""
    binary = build(out_dir)
    cores = os.cpu_count()
    procs = [subprocess.Popen([binary, str(seconds)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(cores)]
    per_kernel = {}
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f'bench.peak: {binary} exited with {proc.returncode}')
        for line in out.splitlines():
            name, _, gflops = line.split()
            per_kernel.setdefault(name, []).append(float(gflops))
    return {name: {'per_core': values, 'total': sum(values)} for name, values in per_kernel.items()}


def peak(seconds=0.5):
    """Formula and measured peak per precision (GFLOP/s), and the clock the measurement implies.

    bf16 on an AMX CPU is the formula's (the kernel has no tile code, its number would be far too
    low); on a CPU without bf16 units it is the fp32 row, since bf16 math runs as fp32 there.
    """
    info = cpuinfo()
    cores = os.cpu_count()
    per_cycle = flops_per_cycle(info)
    kernels = measure(seconds)

    def row(precision, measured):
        formula = cores * info['mhz'] * 1e-3 * per_cycle[precision]
        if measured is None:
            return {'formula_gflops': formula, 'measured_gflops': None, 'peak_gflops': formula,
                    'source': 'formula'}
        return {'formula_gflops': formula, 'measured_gflops': measured, 'peak_gflops': measured,
                'source': 'measured', 'effective_ghz': measured / (cores * per_cycle[precision])}

    def measured(precision):
        return max((kernels[n]['total'] for n in KERNELS[precision] if n in kernels),
                   default=None)

    precisions = {'fp32': row('fp32', measured('fp32'))}
    if 'amx_bf16' in info['flags']:
        precisions['bf16'] = row('bf16', None)
    elif 'avx512_bf16' in info['flags']:
        precisions['bf16'] = row('bf16', measured('bf16'))
    else:
        precisions['bf16'] = dict(precisions['fp32'], source='fp32 (no bf16 units)')
    return {'model_name': info['model_name'], 'cores': cores, 'nominal_mhz': info['mhz'],
            'flops_per_cycle': per_cycle, 'kernels': kernels, 'precisions': precisions}


def describe(result):
    """One line per precision, as BENCHMARKS.md quotes them."""
    lines = [f"{result['model_name']}, {result['cores']} cores, cpuinfo clock "
             f"{result['nominal_mhz'] / 1e3:.3f} GHz"]
    for precision, row in result['precisions'].items():
        per_cycle = result['flops_per_cycle'][precision]
        text = (f"{precision}: formula {result['cores']} x {result['nominal_mhz'] / 1e3:.3f} GHz x "
                f"{per_cycle} FLOPs/cycle = {row['formula_gflops']:.1f} GFLOP/s")
        if row.get('measured_gflops') is not None:
            text += (f"; measured {row['measured_gflops']:.1f} GFLOP/s (all cores at once, i.e. "
                     f"{row['effective_ghz']:.2f} GHz); peak used: measured")
        else:
            text += f"; peak used: {row['source']}"
        lines.append(text)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--seconds', type=float, default=0.5, help='minimum time per kernel run')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out', 'peak.json'))
    args = p.parse_args(argv)
    try:
        result = peak(args.seconds)
    except RuntimeError as e:
        sys.exit(str(e))
    for line in describe(result):
        print(line)
    io_utils.write_json(args.out, result)  # atomic: temp file + rename
    print(f'wrote {os.path.relpath(args.out, ROOT)}', file=sys.stderr)


if __name__ == '__main__':
    main()

/* The CPU's arithmetic peak, measured (bench/peak.py compiles and runs this; benchmark-only).
 *
 * Each kernel keeps NCHAINS independent accumulators in vector registers and updates every one of
 * them once per round with a fused multiply-add (or a bf16 dot-product-accumulate), so nothing
 * but the issue rate of the vector units limits it: NCHAINS exceeds latency x pipes on every x86
 * core we know (4-5 cycles x 2 pipes). Prints one line per kernel the CPU supports:
 *
 *     <kernel> <flops per instruction> <GFLOP/s of this thread>
 *
 * FLOPs count a multiply-add as 2: an 8-lane fp32 FMA is 16 FLOPs, a 16-lane one 32, and
 * vdpbf16ps on 512 bits (16 fp32 lanes, each adding two bf16 products) 64.
 * The kernels carry target attributes and are chosen at run time, so the file builds with plain
 * `cc -O3` on any x86-64 compiler that knows the intrinsics (gcc >= 10, clang >= 11).
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NCHAINS 12
/* The chains must live in registers, not in the array's memory: unroll the inner loop fully. */
#if defined(__clang__)
#define UNROLLED _Pragma("unroll")
#else
#define UNROLLED _Pragma("GCC unroll 16")
#endif

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Each kernel returns a value that depends on every accumulator, so none is optimised away. */

__attribute__((target("avx2,fma"))) static float fma_ymm(long rounds) {
  __m256 acc[NCHAINS];
  const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-6f);
  for (int i = 0; i < NCHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
  for (long r = 0; r < rounds; r++)
    UNROLLED for (int i = 0; i < NCHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], mul, add);
  float sum = 0.f;
  for (int i = 0; i < NCHAINS; i++) sum += _mm256_cvtss_f32(acc[i]);
  return sum;
}

__attribute__((target("avx512f"))) static float fma_zmm(long rounds) {
  __m512 acc[NCHAINS];
  const __m512 mul = _mm512_set1_ps(0.999999f), add = _mm512_set1_ps(1e-6f);
  for (int i = 0; i < NCHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
  for (long r = 0; r < rounds; r++)
    UNROLLED for (int i = 0; i < NCHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], mul, add);
  float sum = 0.f;
  for (int i = 0; i < NCHAINS; i++) sum += _mm512_cvtss_f32(acc[i]);
  return sum;
}

__attribute__((target("avx512f,avx512bf16"))) static float dpbf16_zmm(long rounds) {
  __m512 acc[NCHAINS];
  /* bf16 bit patterns: 0x3f80 is 1.0, 0x3380 is about 6e-8 */
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
  for (int i = 0; i < NCHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
  for (long r = 0; r < rounds; r++)
    UNROLLED for (int i = 0; i < NCHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  float sum = 0.f;
  for (int i = 0; i < NCHAINS; i++) sum += _mm512_cvtss_f32(acc[i]);
  return sum;
}

static void run(const char *name, float (*kernel)(long), int flops_per_instruction,
                double min_seconds) {
  long rounds = 1 << 20;
  double elapsed;
  float sink;
  for (;;) { /* grow the round count until one run lasts min_seconds */
    double start = seconds();
    sink = kernel(rounds);
    elapsed = seconds() - start;
    if (elapsed >= min_seconds) break;
    rounds *= 2;
  }
  printf("%s %d %.3f\n", name, flops_per_instruction,
         (double)rounds * NCHAINS * flops_per_instruction / elapsed * 1e-9);
  fprintf(stderr, "%s sink %g\n", name, sink);
}

int main(int argc, char **argv) {
  double min_seconds = argc > 1 ? atof(argv[1]) : 0.5;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    run("fma_ymm_fp32", fma_ymm, 16, min_seconds);
  if (__builtin_cpu_supports("avx512f")) run("fma_zmm_fp32", fma_zmm, 32, min_seconds);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"))
    run("dpbf16_zmm_bf16", dpbf16_zmm, 64, min_seconds);
  return 0;
}

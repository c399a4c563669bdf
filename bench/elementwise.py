"""Leaky ReLU and residual adds in isolation: fp32 against bf16, and rewrites of the activation.

The step profile (``bench.step_speed --profile``) shows the elementwise ops taking a large share
of the bf16 step. This script times them alone, outside the step, on a tensor the size of
FixMatch's first stage at uratio 7 (960 x 32 x 32 x 32): each op as a ``tf.function`` on its own,
and each way of writing the activation with its gradient. It answers two questions: is there a
slow bf16 kernel, and would another formulation of leaky ReLU be cheaper?

    python -m bench.elementwise
"""
import argparse
import os
import time

import bench

from libml import io_utils


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--shape', default='960,32,32,32', help='tensor shape, comma-separated')
    p.add_argument('--repeats', type=int, default=7, help='timed calls per case (median kept)')
    p.add_argument('--out', default=os.path.join('bench', 'out', 'elementwise.json'))
    return p.parse_args(argv)


def activations():
    """Ways of writing leaky ReLU (alpha 0.1), each differentiable."""
    import tensorflow as tf

    @tf.custom_gradient
    def where_gradient(x):
        def grad(dy):
            return dy * tf.where(x > 0, tf.ones_like(dy), tf.fill(tf.shape(dy),
                                                                  tf.constant(0.1, dy.dtype)))
        return tf.nn.leaky_relu(x, 0.1), grad

    return {
        'tf.nn.leaky_relu (the project)': lambda x: tf.nn.leaky_relu(x, 0.1),
        'maximum(x, 0.1 x)': lambda x: tf.maximum(x, 0.1 * x),
        '0.9 relu(x) + 0.1 x': lambda x: 0.9 * tf.nn.relu(x) + 0.1 * x,
        'custom gradient with tf.where': where_gradient,
        'leaky_relu in fp32, cast around': lambda x: tf.cast(
            tf.nn.leaky_relu(tf.cast(x, tf.float32), 0.1), x.dtype),
    }


def cpu_ms(fn, args, repeats):
    fn(*args)  # trace
    times = []
    for _ in range(repeats):
        start = time.process_time()
        out = fn(*args)
        out.numpy()
        times.append(time.process_time() - start)
    return 1000 * bench.median(times)


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf
    shape = [int(v) for v in args.shape.split(',')]
    x32, g32 = tf.random.normal(shape, seed=1), tf.random.normal(shape, seed=2)
    ops = {
        'LeakyRelu': lambda x, g: tf.raw_ops.LeakyRelu(features=x, alpha=0.1),
        'LeakyReluGrad': lambda x, g: tf.raw_ops.LeakyReluGrad(gradients=g, features=x, alpha=0.1),
        'AddV2': lambda x, g: x + g,
        'AddN (3 inputs)': lambda x, g: tf.add_n([x, g, x]),
    }

    def with_gradient(act):
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                total = tf.reduce_sum(tf.cast(act(x), tf.float32))
            return tape.gradient(total, x)
        return tf.function(step)

    results = {'ops': {}, 'activation_forward_backward': {}}
    print(f'CPU ms per call (median of {args.repeats}), tensor {shape}')
    for dtype in (tf.float32, tf.bfloat16):
        x, g = tf.cast(x32, dtype), tf.cast(g32, dtype)
        for name, op in ops.items():
            ms = cpu_ms(tf.function(op), (x, g), args.repeats)
            results['ops'].setdefault(name, {})[dtype.name] = ms
            print(f'  op {name:36s} {dtype.name:9s} {ms:8.1f}', flush=True)
        for name, act in activations().items():
            ms = cpu_ms(with_gradient(act), (x,), args.repeats)
            results['activation_forward_backward'].setdefault(name, {})[dtype.name] = ms
            print(f'  fwd+bwd {name:36s} {dtype.name:9s} {ms:8.1f}', flush=True)
    results.update({'command': 'python -m bench.elementwise', 'machine': bench.machine_info(),
                    'args': vars(args)})
    io_utils.write_json(args.out, results)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()

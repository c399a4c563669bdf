"""The benchmark code that sets TensorFlow's and PyTorch's profiles side by side (BENCHMARKS §5).

A wrong grouping or a verbose line credited to the wrong case would silently move time between
rows of the comparison, so both are checked on hand-written inputs of each framework's names.
"""
import pytest

import bench
from bench import conv_ops


def test_op_groups_put_both_frameworks_ops_in_the_same_groups():
    per_op = {
        # TensorFlow (oneDNN and Eigen kernels)
        '_MklNativeConv2DBackpropFilter': 1.0, '_MklNativeConv2D': 2.0,
        '_MklNativeFusedBatchNormGradV3': 4.0, 'LeakyReluGrad': 8.0, 'AddN': 16.0, 'AddV2': 32.0,
        'AssignAddVariableOp': 64.0,  # an optimizer update, not a residual add
        # PyTorch
        'aten::convolution_backward': 128.0, 'aten::mkldnn_convolution': 256.0,
        'autograd::engine::evaluate_function: ConvolutionBackward0': 512.0,
        'aten::native_batch_norm': 1024.0, 'aten::leaky_relu_backward': 2048.0,
        'aten::add': 4096.0, 'aten::add_': 8192.0,
        'aten::addmm': 16384.0,  # the heads' matmul, not an add
    }
    groups = bench.op_groups(per_op)
    assert groups == {'convolution': 1 + 2 + 128 + 256 + 512, 'batch norm': 4 + 1024,
                      'leaky ReLU': 8 + 2048, 'adds': 16 + 32 + 4096 + 8192,
                      'other': 64 + 16384}
    assert sum(groups.values()) == sum(per_op.values())  # nothing lost or counted twice


def verbose(kind, impl, prop, ms, attrs=''):
    return (f'onednn_verbose,v1,primitive,exec,cpu,{kind},{impl},{prop},src:bf16::blocked:acdb::f0'
            f' wei:bf16:a:blocked:ABcd16b16a::f0,{attrs},alg:convolution_direct,mb8_ic4oc4,{ms}')


def test_verbose_lines_are_credited_to_the_case_being_timed():
    out = '\n'.join([
        'onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)',
        'onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2',
        'onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support',
        'MARK skip',
        verbose('convolution', 'jit:avx512_core', 'forward_training', 99.0),  # warm-up
        'MARK 8x4 forward',
        verbose('reorder', 'jit:uni', 'undef', 50.0),  # not a convolution
        verbose('convolution', 'brg_conv_fwd:avx512_core', 'forward_training', 2.0),
        verbose('convolution', 'brg_conv_fwd:avx512_core', 'forward_training', 4.0),
        'MARK skip',
        verbose('convolution', 'jit_bf16:avx512_core_bf16', 'backward_weights', 77.0),
        'MARK 8x4 filter_grad',
        verbose('convolution', 'jit_bf16:avx512_core_bf16', 'backward_weights', 6.0),
        verbose('convolution', 'jit_bf16:avx512_core_bf16', 'backward_weights', 5.0,
                attrs='attr-scratchpad:user'),
        'MARK skip',
        'RESULT {"version": "2.21.0", '
        '"times": {"8x4 forward": [0.002, 0.004], "8x4 filter_grad": [0.006]}}',
    ])
    times, kernels, info = conv_ops.parse_worker_output(out)
    assert info == {'version': '2.21.0', 'onednn': 'v3.7.3', 'runtime': 'threadpool', 'nthr': 2}
    assert times == {'8x4 forward': [0.002, 0.004], '8x4 filter_grad': [0.006]}
    assert kernels == {
        '8x4 forward': {'brg_conv_fwd:avx512_core (forward)': [0.002, 0.004]},
        '8x4 filter_grad': {'jit_bf16:avx512_core_bf16 (filter_grad)': [0.006],
                            'jit_bf16:avx512_core_bf16 (filter_grad, attr-scratchpad:user)':
                                [0.005]},
    }


def test_a_worker_without_result_is_an_error():
    with pytest.raises(RuntimeError, match='RESULT'):
        conv_ops.parse_worker_output('MARK skip\n')

"""The step workers' protocol (bench/torch_peer.py, bench/usb_peer.py), free of TensorFlow and
libml so that a worker in another virtual environment (USB's) can use it.

A worker warms its step up, prints one JSON line ``{"ready": true, ...}``, then answers each
``run N`` line on stdin with ``{"times": [...], "cpu": [...]}`` (wall and process-CPU seconds of
each of N steps); any other line ends it.
"""
import json
import sys
import time


def serve(step, info, warmup):
    """Runs the protocol for ``step(index)``; ``info`` goes into the ready line."""
    for i in range(1 + warmup):
        step(i)
    print(json.dumps({'ready': True, **info}), flush=True)
    index = 0
    for line in sys.stdin:
        if not line.startswith('run'):
            break
        times, cpu = [], []
        for _ in range(int(line.split()[1])):
            start, cpu_start = time.perf_counter(), time.process_time()
            step(index)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
            index += 1
        print(json.dumps({'times': times, 'cpu': cpu}), flush=True)

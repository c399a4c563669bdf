"""A PyTorch peer of the project's training step, to tell framework cost from model cost.

BENCHMARK-ONLY: PyTorch is not a dependency of the project (see bench/requirements.txt). This file
re-implements libml/models.py's network (FixMatch ResNet: 3x3 conv stem of 16 filters, ``scales``
stages of ``repeat`` pre-activation residual blocks, leaky ReLU 0.1, batch norm with momentum 0.001
in torch terms (0.999 in Keras terms) and epsilon 1e-3, convolutions without bias, linear heads on
the pooled embedding: classifier k=10, with --dc3 also overclustering 50 and ambiguity 1) and two
steps mirroring the project's methods:

* ``mean_teacher``: student forward on labeled + 2 unlabeled views (one batch), teacher (EMA
  network, eval mode, no gradient) forward on view 1, cross-entropy + softmax-MSE consistency,
  SGD Nesterov with weight decay on kernels, EMA of parameters and batch-norm statistics;
* ``pi_model``: student forward on labeled + 2 unlabeled views, cross-entropy + softmax-MSE
  between the views (no gradient through the first), same optimiser and EMA -- the step of the
  issue's reference probe (``../shared/perf/step_torch.py``, bench/anchors.py) plus weight decay
  and EMA;
* ``fixmatch``: labeled + weak + strong views (uratio 7 by default), confidence-masked pseudo-label
  cross-entropy, same optimiser and EMA.

With ``--dc3`` the step adds DC3's losses as libml/dc3.py computes them (certainty scaling, CE^-1
to a partner of another label, batch-rank ambiguity loss, overcluster consistency).

    python -m bench.torch_peer --method mean_teacher --precision bf16      # torch alone
    python -m bench.torch_peer --vs_tf                                     # TF / torch ratios
    python -m bench.torch_peer --method fixmatch --uratio 7 --precision bf16 --profile --steps 3

``--vs_tf`` starts one TF worker (the project's real ``method._train_step``) and one torch worker
as subprocesses, so the two frameworks never share thread pools, and runs blocks of steps
alternately (TF, torch, torch, TF, ...); the idle worker waits on its input pipe.

``--profile`` (torch alone) traces ``--steps`` steps with torch.profiler and prints the self CPU
time per op and per op group (bench.OP_GROUPS), the grouping ``bench.step_speed --profile`` prints
for TensorFlow, so the two splits of the same step can be set side by side. The profiler adds a
little time per op; compare shares and large differences, not the last few percent.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import bench  # noqa: E402
from bench import worker_protocol

from libml import io_utils

NUM_CLASSES = 10
CONFIGS = {  # --vs_tf rows: (method, uratio)
    'mean_teacher': ('mean_teacher', 1),
    'pi_model': ('pi_model', 1),
    'fixmatch_u7': ('fixmatch', 7),
}


# ---------------------------------------------------------------------------------------------
# The torch network and steps
# ---------------------------------------------------------------------------------------------

def build_torch(args):
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv(cin, cout, kernel, stride=1):
        layer = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        nn.init.normal_(layer.weight, std=math.sqrt(2.0 / (kernel * kernel * cout)))
        return layer

    def bn(channels):
        return nn.BatchNorm2d(channels, momentum=0.001, eps=1e-3)

    class Residual(nn.Module):
        def __init__(self, cin, filters, stride, activate_before_residual):
            super().__init__()
            self.abr = activate_before_residual
            self.bn1, self.conv1 = bn(cin), conv(cin, filters, 3, stride)
            self.bn2, self.conv2 = bn(filters), conv(filters, filters, 3)
            self.shortcut = conv(cin, filters, 1, stride) if cin != filters else None

        def forward(self, x0):
            x = F.leaky_relu(self.bn1(x0), 0.1)
            if self.abr:
                x0 = x
            x = self.conv2(F.leaky_relu(self.bn2(self.conv1(x)), 0.1))
            if self.shortcut is not None:
                x0 = self.shortcut(x0)
            return x0 + x

    class Network(nn.Module):
        def __init__(self, heads, filters, scales, repeat):
            super().__init__()
            blocks, cin = [conv(3, 16, 3)], 16
            for scale in range(scales):
                f = filters << scale
                blocks.append(Residual(cin, f, 2 if scale else 1, scale == 0))
                blocks += [Residual(f, f, 1, False) for _ in range(repeat - 1)]
                cin = f
            self.body, self.bn = nn.Sequential(*blocks), bn(cin)
            self.heads = nn.ModuleDict({name: nn.Linear(cin, units)
                                        for name, units in heads.items()})
            for head in self.heads.values():
                nn.init.xavier_normal_(head.weight)
                nn.init.zeros_(head.bias)

        def forward(self, x):
            embedding = F.leaky_relu(self.bn(self.body(x)), 0.1).mean((2, 3))
            return {name: head(embedding) for name, head in self.heads.items()}

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    heads = {'logits': NUM_CLASSES}
    if args.dc3:
        heads.update({'overcluster_logits': 5 * NUM_CLASSES, 'ambiguity_logit': 1})
    scales = bench_scales(args.size)
    model = Network(heads, args.filters, scales, 4).to(memory_format=torch.channels_last)
    ema = Network(heads, args.filters, scales, 4).to(memory_format=torch.channels_last)
    ema.load_state_dict(model.state_dict())
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    kernels = [p for n, p in model.named_parameters() if n.endswith('weight') and p.dim() > 1]
    others = [p for n, p in model.named_parameters() if not (n.endswith('weight') and p.dim() > 1)]
    # Weight decay on kernels only, as libml/losses.py's l2_regularization (d/dw wd*|w|^2/2 = wd*w).
    optimizer = torch.optim.SGD([{'params': kernels, 'weight_decay': 5e-4},
                                 {'params': others, 'weight_decay': 0.0}],
                                lr=0.03, momentum=0.9, nesterov=True)
    ema_tensors = [t for t in list(ema.parameters()) + list(ema.buffers()) if t.is_floating_point()]
    model_tensors = [t for t in list(model.parameters()) + list(model.buffers())
                     if t.is_floating_point()]
    views = 2
    labeled, unlabeled = args.batch, args.batch * args.uratio

    def images():
        return torch.randn(labeled + views * unlabeled, 3, args.size, args.size).to(
            memory_format=torch.channels_last)

    data = [(images(), torch.randint(0, NUM_CLASSES, (labeled,))) for _ in range(3)]

    def step(index):
        x, labels = data[index % len(data)]
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=args.precision == 'bf16'):
            out = model(x)
            out = {k: v.float() for k, v in out.items()}
            parts = {k: v.split([labeled, unlabeled, unlabeled]) for k, v in out.items()}
            lab = {k: v[0] for k, v in parts.items()}
            unl = [{k: v[i] for k, v in parts.items()} for i in (1, 2)]
            xe = F.cross_entropy(lab['logits'], labels, reduction='none')
            if args.method == 'mean_teacher':
                with torch.no_grad():
                    teacher = ema(x[labeled:labeled + unlabeled])['logits'].float()
                ssl = ((F.softmax(teacher, 1) - F.softmax(unl[1]['logits'], 1)) ** 2).mean(1)
                ssl_weight = 50.0 * min(1.0, index / 1000)  # the warm-up ramp, as a number
            elif args.method == 'pi_model':
                target = F.softmax(unl[0]['logits'].detach(), 1)
                ssl = ((target - F.softmax(unl[1]['logits'], 1)) ** 2).mean(1)
                ssl_weight = 10.0 * min(1.0, index / 1000)
            else:
                probs = F.softmax(unl[0]['logits'].detach(), 1)
                confidence, pseudo = probs.max(1)
                ssl = F.cross_entropy(unl[1]['logits'], pseudo, reduction='none') * (
                    confidence >= 0.95).float()
                ssl_weight = 1.0
            loss = (dc3_loss(torch, F, lab, unl, labels, xe, ssl, ssl_weight) if args.dc3
                    else xe.mean() + ssl_weight * ssl.mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_tensors, model_tensors, 1.0 - 0.999)
        return float(loss.detach())

    return step, labeled + views * unlabeled


def dc3_loss(torch, F, lab, unl, labels, xe, ssl, ssl_weight, eps=1e-6):
    """libml/dc3.py's DC3Mixin.combine_losses with its defaults (wol=wou=10, wf=ws=0.1, p_A=0.6)."""
    def ceinv(logits, targets, mask=None):
        probs = F.softmax(logits, 1)
        n = targets.shape[0]
        score = (2.0 * (targets[:, None] != targets[None, :]).float()
                 + 1.0 - torch.eye(n) + torch.rand(n, n))
        partner = probs[score.argmax(1)]
        value = -(probs.clamp(eps, 1 - eps) * torch.log(1 - partner.clamp(eps, 1 - eps))).sum(1)
        return value if mask is None else value * mask

    certain_l = 1 - torch.sigmoid(lab['ambiguity_logit'][:, 0]).detach()
    ambiguous_u = torch.sigmoid(unl[0]['ambiguity_logit'][:, 0]).detach()
    certain_u = 1 - ambiguous_u
    total = xe.mean() + ssl_weight * (ssl * certain_u).mean()
    total = total + 10.0 * (ceinv(lab['overcluster_logits'], labels) * certain_l).mean()
    confidence, pseudo = F.softmax(unl[0]['logits'].detach(), 1).max(1)
    total = total + 10.0 * (ceinv(unl[0]['overcluster_logits'], pseudo,
                                  (confidence >= 0.95).float()) * certain_u).mean()
    logit = unl[0]['ambiguity_logit'][:, 0]
    n = logit.shape[0]
    order = torch.argsort(logit.detach(), descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(n))
    cutoff = min(max(int(n * 0.6), 1), n - 1)
    targets = (rank < cutoff).float()
    total = total + 0.1 * F.binary_cross_entropy_with_logits(logit, targets)
    p = F.softmax(unl[0]['overcluster_logits'], 1).clamp(eps, 1 - eps)
    q = F.softmax(unl[1]['overcluster_logits'], 1).clamp(eps, 1 - eps)
    return total + 0.1 * (-(p * torch.log(q)).sum(1) * ambiguous_u).mean()


def bench_scales(size):
    import math
    return max(1, int(math.log2(size)) - 2)  # libml.models.default_scales, without importing TF


# ---------------------------------------------------------------------------------------------
# The TF side: the project's real step
# ---------------------------------------------------------------------------------------------

def build_tf(args):
    import tempfile

    from bench import step_speed
    tmp = tempfile.mkdtemp(prefix='bench_tf_')
    info = bench.write_random_dataset(os.path.join(tmp, 'data'), size=args.size)
    method = bench.make_method(args.method, info, os.path.join(tmp, 'runs'), dc3=args.dc3,
                               mixed_precision=int(args.precision == 'bf16'),
                               filters=args.filters, batch=args.batch, uratio=args.uratio,
                               fused_bn_act=args.fused_bn_act)
    batches = step_speed.prefetch(method, info)

    def step(index):
        step_speed.timed(method._train_step, batches[index % len(batches)])

    return step, bench.images_per_step(method)[0]


# ---------------------------------------------------------------------------------------------
# Worker protocol and the comparison
# ---------------------------------------------------------------------------------------------

def serve(args):
    """Builds one step, warms it up, then answers ``run N`` lines with N step times (JSON)."""
    step, images = (build_torch if args.worker == 'torch' else build_tf)(args)
    worker_protocol.serve(step, {'images_per_step': images}, args.warmup)


class Worker:
    def __init__(self, kind, args, method, uratio, precision):
        cmd = [sys.executable, '-m', 'bench.torch_peer', '--worker', kind, '--method', method,
               '--uratio', str(uratio), '--precision', precision, '--filters', str(args.filters),
               '--size', str(args.size), '--batch', str(args.batch), '--threads',
               str(args.threads), '--warmup', str(args.warmup),
               '--fused_bn_act', args.fused_bn_act] + (['--dc3'] if args.dc3 else [])
        self.kind = kind
        self.proc = subprocess.Popen(cmd, cwd=bench.ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith('{'):
                return json.loads(line)
        raise RuntimeError(f'{self.kind} worker exited with {self.proc.wait()}')

    def run(self, steps):
        self.proc.stdin.write(f'run {steps}\n')
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.write('quit\n')
        self.proc.stdin.close()
        self.proc.wait()


def versus_tf(args):
    results = []
    for config in args.configs.split(','):
        method, uratio = CONFIGS[config]
        for precision in args.precisions.split(','):
            start = time.time()
            # Built one after the other, so tracing in one does not slow the other's warm-up.
            workers = {'tf': Worker('tf', args, method, uratio, precision)}
            workers['torch'] = Worker('torch', args, method, uratio, precision)
            times, cpu = {k: [] for k in workers}, {k: [] for k in workers}
            load = os.getloadavg()[0]
            for i in range(args.rounds):
                order = ('tf', 'torch') if i % 2 == 0 else ('torch', 'tf')
                for kind in order:
                    block = workers[kind].run(args.block)
                    times[kind] += block['times']
                    cpu[kind] += block['cpu']
            for w in workers.values():
                w.close()
            row = {'config': config, 'method': method, 'uratio': uratio, 'precision': precision,
                   'dc3': args.dc3, 'loadavg_1min_before': load}
            for kind, w in workers.items():
                images, step = w.info['images_per_step'], bench.median(times[kind])
                row[kind] = {'images_per_step': images, 'median_step_s': step,
                             'img_per_s': images / step,
                             'best_img_per_s': images / min(times[kind]),
                             'img_per_cpu_s': images / bench.median(cpu[kind]),
                             'step_times_s': times[kind], 'step_cpu_s': cpu[kind]}
            for metric in ('img_per_s', 'best_img_per_s', 'img_per_cpu_s'):
                row[f'tf_over_torch_{metric}'] = row['tf'][metric] / row['torch'][metric]
            results.append(row)
            print(f"{config:13s} {precision}: TF {row['tf']['img_per_s']:6.1f} img/s (best "
                  f"{row['tf']['best_img_per_s']:.1f}), torch {row['torch']['img_per_s']:6.1f} "
                  f"img/s (best {row['torch']['best_img_per_s']:.1f}); TF/torch median "
                  f"{row['tf_over_torch_img_per_s']:.2f}, best "
                  f"{row['tf_over_torch_best_img_per_s']:.2f}, per CPU-second "
                  f"{row['tf_over_torch_img_per_cpu_s']:.2f}  [{time.time() - start:.0f} s]",
                  flush=True)
    return results


def step_times(step, count):
    """Wall seconds of `count` calls step(0), step(1), ..."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times


def profile_torch(args):
    """Self CPU time per op type and per op group of --steps torch steps, per step."""
    from torch.profiler import ProfilerActivity, profile

    step, images = build_torch(args)
    for i in range(args.warmup):
        step(i)
    plain = step_times(step, args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        traced = step_times(step, args.steps)
    per_op = {}
    for event in prof.key_averages():  # microseconds, summed over the traced steps
        seconds = event.self_cpu_time_total * 1e-6 / args.steps
        per_op[event.key] = per_op.get(event.key, 0.0) + seconds
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    print(f'torch {args.method} u{args.uratio} {args.precision}: op self CPU time per step '
          f'{1000 * total:.1f} ms; step wall time {1000 * bench.median(plain):.0f} ms without '
          f'the profiler, {1000 * bench.median(traced):.0f} ms with it (medians)', flush=True)
    for op, seconds in ranked[:args.top]:
        print(f'  {op[:60]:60s} {1000 * seconds:8.2f} ms  {100 * seconds / total:5.1f} %')
    print('  by group:')
    groups = bench.print_op_groups(per_op, indent='    ')
    return {'method': args.method, 'uratio': args.uratio, 'precision': args.precision,
            'dc3': args.dc3, 'images_per_step': images, 'op_self_s_per_step': dict(ranked),
            'group_self_s_per_step': groups, 'total_s_per_step': total,
            'step_s_without_profiler': plain, 'step_s_with_profiler': traced}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--vs_tf', action='store_true',
                   help='alternate the TF project step and this torch step; print TF/torch ratios')
    p.add_argument('--configs', default='mean_teacher,fixmatch_u7',
                   help=f'--vs_tf rows, from {",".join(CONFIGS)}')
    p.add_argument('--precisions', default='fp32,bf16')
    p.add_argument('--rounds', type=int, default=4, help='--vs_tf: alternations per row')
    p.add_argument('--block', type=int, default=2, help='--vs_tf: steps per block')
    p.add_argument('--method', default='mean_teacher', choices=['mean_teacher', 'pi_model', 'fixmatch'])
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    p.add_argument('--uratio', type=int, default=1)
    p.add_argument('--dc3', action='store_true', help='add the DC3 heads and losses')
    p.add_argument('--fused_bn_act', default='auto', choices=['auto', 'on', 'off'],
                   help="the TF step's --fused_bn_act (the training scripts' flag)")
    p.add_argument('--filters', type=int, default=32)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    p.add_argument('--steps', type=int, default=10, help='torch alone: timed steps')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--profile', action='store_true',
                   help='torch alone: self CPU time per op and op group under torch.profiler')
    p.add_argument('--top', type=int, default=12, help='--profile: ops listed')
    p.add_argument('--worker', choices=['tf', 'torch'], help=argparse.SUPPRESS)
    p.add_argument('--out', default=os.path.join('bench', 'out', 'torch_peer.json'))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        serve(args)
        return
    unknown = [c for c in args.configs.split(',') if c not in CONFIGS]
    if unknown:
        sys.exit(f'torch_peer: unknown --configs {",".join(unknown)}; use {",".join(CONFIGS)}')
    bench.require_torch('torch_peer')
    machine = bench.machine_info()
    bench.banner_with_torch(machine)
    if args.vs_tf:
        result = {'vs_tf': versus_tf(args)}
    elif args.profile:
        result = {'torch_profile': profile_torch(args)}
    else:
        step, images = build_torch(args)
        for i in range(args.warmup):
            step(i)
        times = step_times(step, args.steps)
        median = bench.median(times)
        print(f'torch {args.method} u{args.uratio} {args.precision} dc3={args.dc3}: '
              f'{1000 * median:.0f} ms/step, {images / median:.1f} img/s ({images} images/step)')
        result = {'torch_alone': {'method': args.method, 'uratio': args.uratio,
                                  'precision': args.precision, 'dc3': args.dc3,
                                  'images_per_step': images, 'median_step_s': median,
                                  'img_per_s': images / median, 'step_times_s': times}}
    result.update({'command': 'python -m bench.torch_peer ' + ' '.join(sys.argv[1:]),
                   'machine': machine, 'args': vars(args)})
    io_utils.write_json(args.out, result)  # atomic: no half-written results
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()

"""One training step, USB's against ours, from the same weights on the same batches (issue #21).

``--side torch`` (USB's venv): USB's ``wrn_28_2`` (batch-norm momentum 0.01 as in the parity runs),
its ``get_optimizer`` (SGD, Nesterov momentum 0.9, weight decay 5e-4 off the batch norms and
biases) and cosine schedule over 384 steps train ``--steps`` steps on random batches of 64; the
batches, the initial and the final weights go to ``--file``.

``--side ours`` (project python, with ``PROBE=layout,eps,pad`` from bench/usb_gap.patch so that our
network has USB's layout): loads those initial weights into our network and trains the same
steps with our cross-entropy, weight decay (``losses.l2_regularization``), Keras' SGD and
``trainer.CosineDecay``, then prints both sides' losses and, per convolution, how the two updates
compare (cosine and norm ratio of final minus initial kernel). Equal training gives equal losses
to float32 rounding and cosines of 1 to about six digits. Run through ``bench/usb_gap.sh step``.
"""
import argparse
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# USB's modules without a counterpart in ours: block2/3's first batch norm, whose output the
# transition block computes but never uses.
UNUSED = ('block2.layer.0.bn1', 'block3.layer.0.bn1')


def torch_side(args):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, ROOT)
    from bench import usb_peer
    usb_peer.install_placeholders()
    usb_peer.torchvision_without_ops()
    from semilearn.core.utils import get_cosine_schedule_with_warmup, get_net_builder, get_optimizer
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = get_net_builder('wrn_28_2', False)(num_classes=10)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.01
    rng = np.random.RandomState(0)
    xs = rng.randn(args.steps, 64, 3, 32, 32).astype(np.float32)
    ys = rng.randint(0, 10, (args.steps, 64))
    state = lambda: {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    init = state()
    optimizer = get_optimizer(net, 'SGD', 0.03, 0.9, 5e-4, 1.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 384, num_warmup_steps=0)
    net.train()
    losses = []
    for x, y in zip(xs, ys):
        loss = F.cross_entropy(net(torch.from_numpy(x))['logits'], torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        schedule.step()
        net.zero_grad()
        losses.append(loss.item())
    np.savez(args.file, xs=xs, ys=ys, losses=np.array(losses),
             **{'init/' + k: v for k, v in init.items()},
             **{'final/' + k: v for k, v in state().items()})
    print(f'torch: {args.steps} steps written to {args.file}')


def ours_side(args):
    import keras
    import tensorflow as tf

    from libml import losses, models, trainer
    saved = np.load(args.file)
    names = [k[len('init/'):] for k in saved.files if k.startswith('init/')]
    t_convs = [k for k in names if k.endswith('.weight') and saved['init/' + k].ndim == 4]
    t_norms = [k[:-len('.running_mean')] for k in names if k.endswith('.running_mean')]
    t_norms = [k for k in t_norms if k not in UNUSED]
    model = models.build_network('resnet', 32, {'classify': 10}, filters=32, bn_momentum=0.99)

    def created(layer):  # Keras numbers auto-named layers in creation order: conv2d, conv2d_1...
        match = re.search(r'_(\d+)$', layer.name)
        return int(match.group(1)) if match else 0
    convs = sorted((l for l in model.layers if isinstance(l, keras.layers.Conv2D)), key=created)
    norms = sorted((l for l in model.layers if hasattr(l, 'moving_mean')), key=created)
    dense = next(l for l in model.layers if isinstance(l, keras.layers.Dense))
    assert (len(convs), len(norms)) == (len(t_convs), len(t_norms)), 'run with PROBE=layout,eps,pad'
    for layer, k in zip(convs, t_convs):  # torch [out, in, h, w] -> Keras [h, w, in, out]
        layer.kernel.assign(saved['init/' + k].transpose(2, 3, 1, 0))
    for layer, k in zip(norms, t_norms):
        for variable, field in ((layer.gamma, 'weight'), (layer.beta, 'bias'),
                                (layer.moving_mean, 'running_mean'),
                                (layer.moving_variance, 'running_var')):
            variable.assign(saved[f'init/{k}.{field}'])
    dense.kernel.assign(saved['init/classifier.weight'].T)
    dense.bias.assign(saved['init/classifier.bias'])
    # USB's first convolution has a bias (ours none); block1's first batch norm cancels it.
    optimizer = keras.optimizers.SGD(trainer.CosineDecay(0.03, 384), momentum=0.9, nesterov=True)
    ours = []
    for x, y in zip(saved['xs'], saved['ys']):
        with tf.GradientTape() as tape:
            logits = model(tf.constant(x.transpose(0, 2, 3, 1)), training=True)['classify']
            xe = tf.reduce_mean(losses.cross_entropy(tf.constant(y), logits, None))
            total = xe + 5e-4 * losses.l2_regularization(model.trainable_variables)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        ours.append(float(xe))
    print('step  USB loss    our loss')
    for step, (theirs, mine) in enumerate(zip(saved['losses'], ours), 1):
        print(f'{step:4d}  {theirs:.7f}  {mine:.7f}')
    cosines, ratios = [], []
    for layer, k in zip(convs, t_convs):
        start = saved['init/' + k].transpose(2, 3, 1, 0)
        theirs = saved['final/' + k].transpose(2, 3, 1, 0) - start
        mine = layer.kernel.numpy() - start
        cosines.append(np.sum(theirs * mine) / np.linalg.norm(theirs) / np.linalg.norm(mine))
        ratios.append(np.linalg.norm(mine) / np.linalg.norm(theirs))
    print(f'{len(convs)} convolutions, update ours vs USB: cosine min {min(cosines):.7f}; '
          f'norm ratio {min(ratios):.5f}..{max(ratios):.5f}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--side', choices=('torch', 'ours'), required=True)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--file', default=os.path.join(ROOT, 'bench', 'out', 'usb_gap_step.npz'))
    args = parser.parse_args()
    (torch_side if args.side == 'torch' else ours_side)(args)


if __name__ == '__main__':
    main()

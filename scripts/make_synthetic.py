#!/usr/bin/env python
"""Generates the embedded default dataset: small ambiguous images whose true soft labels are known.

Output, in the DCIC raw layout that ``create_datasets.py`` reads::

    <out>/<name>/fold1..fold5/img_00000.png
    <out>/<name>/annotations.json   one anonymised annotation set per simulated annotator, in the
                                    DCIC format (user_mail "INVALID", dataset_name --dataset_name)
    <out>/<name>/truth.csv          image_path (relative to <out>/<name>), class_a, class_b, alpha,
                                    then the true soft label, one column per class
    <out>/<name>/README.md          how it was generated

Each class has a prototype that flips and small shifts do not change: a class-specific pair of
colours drawn as concentric rings of a class-specific frequency around a (shifted) centre. A certain
image is a shifted, jittered, noisy instance of one prototype. An ambiguous image blends the
prototypes of classes a and b with weight alpha ~ U(0.25, 0.5) toward b, and each annotator votes b
with probability alpha, else a, so the vote shares estimate the true soft label (1 - alpha, alpha).
Random ring phase, brightness/contrast/colour jitter and pixel noise keep it from being trivial.
Deterministic for a seed; needs no download.

Usage (from the repository root):
    python scripts/make_synthetic.py                      # data/raw/Synthetic, 2000 images
    python scripts/make_synthetic.py --num_images 200 --out /tmp/raw --seed 3
"""
import csv
import dataclasses
import io
import json
import os
import re


import numpy as np
from absl import app, flags
from PIL import Image

from libml import io_utils
from libml.errors import DC3Error

NUM_FOLDS = 5
ALPHA_RANGE = (0.25, 0.5)
MAX_SHIFT = 0.25            # ring-centre shift, as a fraction of the half image width
RING_FREQUENCIES = (1.0, 3.0)   # rings per half image width, spread over the classes
# Datasets DCIC defines itself; a generated set under one of these names would be mistaken for it.
DCIC_BUILTIN_NAMES = ('Benthic', 'CIFAR10H', 'MiceBone', 'Pig', 'Plankton', 'QualityMRI',
                      'Synthetic', 'Treeversity#1', 'Treeversity#6', 'Turkey')


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    out: str = 'data/raw'
    name: str = 'Synthetic'             # the folder; the project's dataset name is it lowercased
    # The DCIC dataset name; DCIC ships its own, unrelated 'Synthetic', so ours differs.
    dataset_name: str = 'DC3Synthetic'
    num_images: int = 2000
    num_classes: int = 4
    image_size: int = 32
    annotators: int = 5
    ambiguous_fraction: float = 0.4
    noise: float = 0.12
    seed: int = 0


def check_config(config):
    """One-line errors for values that cannot make a usable dataset."""
    if config.num_images < NUM_FOLDS:
        raise DC3Error(f'--num_images {config.num_images} is too small; every one of the '
                       f'{NUM_FOLDS} folds needs an image')
    if config.num_classes < 2:
        raise DC3Error(f'--num_classes {config.num_classes}: use at least 2 classes')
    if config.image_size < 8:
        raise DC3Error(f'--image_size {config.image_size} is too small; use 8 or more')
    if config.annotators < 1:
        raise DC3Error(f'--annotators {config.annotators}: use at least 1 annotator')
    if not 0 <= config.ambiguous_fraction <= 1:
        raise DC3Error(f'--ambiguous_fraction {config.ambiguous_fraction} must lie in [0, 1]')
    if config.noise < 0:
        raise DC3Error(f'--noise {config.noise} must be non-negative')
    if not config.name or os.sep in config.name or config.name.startswith('.'):
        raise DC3Error(f'--name {config.name!r} must be a plain folder name, e.g. Synthetic')
    if not re.fullmatch(r'[A-Za-z0-9_]+', config.dataset_name) or \
            config.dataset_name in DCIC_BUILTIN_NAMES:
        raise DC3Error(f'--dataset_name {config.dataset_name!r} must be letters, digits and "_" '
                       '(DCIC splits file names on "-") and not the name of a DCIC dataset; '
                       'e.g. DC3Synthetic')


def class_names(num_classes):
    """Zero-padded so that sorting the names keeps the class order."""
    width = len(str(num_classes - 1))
    return [f'class_{i:0{width}d}' for i in range(num_classes)]


def _hsv_to_rgb(hue, saturation, value):
    """Colours from evenly spaced hues, so that every class gets a distinct palette."""
    rgb = Image.new('HSV', (1, 1), (int(hue * 255) % 256, int(saturation * 255),
                                    int(value * 255))).convert('RGB').getpixel((0, 0))
    return np.array(rgb, dtype=np.float64) / 255.0


def make_prototypes(num_classes, rng):
    """Per class: (ring colour, background colour, ring frequency)."""
    offset = rng.random()
    hues = (np.arange(num_classes) / num_classes + offset) % 1.0
    frequencies = rng.permutation(np.linspace(*RING_FREQUENCIES, num_classes))
    prototypes = []
    for c in range(num_classes):
        # Neighbouring classes share a hue in opposite roles, so colour alone is not enough.
        ring = _hsv_to_rgb(hues[c], 0.75, 0.9)
        background = _hsv_to_rgb(hues[(c + 1) % num_classes], 0.6, 0.4)
        prototypes.append((ring, background, frequencies[c]))
    return prototypes


def render(prototype, size, centre, phase):
    """Rings around ``centre`` ([-1, 1] coordinates): a flip or shift gives another instance."""
    ring, background, frequency = prototype
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing='ij')
    radius = np.hypot(x - centre[0], y - centre[1])
    pattern = 0.5 + 0.5 * np.cos(2 * np.pi * frequency * radius + phase)
    return background + (ring - background) * pattern[..., None]


def generate(config):
    """Images (uint8 [n, s, s, 3]) and their truth: classes a and b, alpha, folds and votes."""
    rng = np.random.default_rng(config.seed)
    n, k = config.num_images, config.num_classes
    prototypes = make_prototypes(k, rng)
    class_a = rng.permutation(np.arange(n) % k)                      # balanced classes
    ambiguous = np.zeros(n, dtype=bool)
    ambiguous[rng.permutation(n)[:int(round(config.ambiguous_fraction * n))]] = True
    class_b = np.where(ambiguous, (class_a + rng.integers(1, k, n)) % k, class_a)
    alpha = np.where(ambiguous, rng.uniform(*ALPHA_RANGE, n), 0.0)
    folds = rng.permutation(np.arange(n) % NUM_FOLDS) + 1
    images = np.zeros((n, config.image_size, config.image_size, 3), dtype=np.uint8)
    for i in range(n):
        centre = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
        phase = rng.uniform(0, 2 * np.pi)
        image = ((1 - alpha[i]) * render(prototypes[class_a[i]], config.image_size, centre, phase)
                 + alpha[i] * render(prototypes[class_b[i]], config.image_size, centre, phase))
        contrast = rng.uniform(0.6, 1.4)
        image = image.mean() + contrast * (image - image.mean())
        image = image + rng.uniform(-0.15, 0.15) + rng.uniform(-0.06, 0.06, 3)
        image = image + rng.normal(0, config.noise, image.shape)
        images[i] = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    # Annotator j votes b with probability alpha (certain images have a == b).
    votes = np.where(rng.random((n, config.annotators)) < alpha[:, None], class_b[:, None],
                     class_a[:, None])
    return images, class_a, class_b, alpha, folds, votes


def write_dataset(config):
    """Generates and writes ``<out>/<name>/`` atomically; returns its path."""
    check_config(config)
    images, class_a, class_b, alpha, folds, votes = generate(config)
    names = class_names(config.num_classes)
    files = [f'fold{fold}/img_{i:05d}.png' for i, fold in enumerate(folds)]
    target = os.path.join(config.out, config.name)
    with io_utils.atomic_path(target) as tmp:
        for fold in range(1, NUM_FOLDS + 1):
            os.makedirs(os.path.join(tmp, f'fold{fold}'))
        for image, file in zip(images, files):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format='PNG')
            with open(os.path.join(tmp, file), 'wb') as f:
                f.write(buffer.getvalue())
        # DCIC only loads anonymised sets: user_mail "INVALID" and "INVALID" in the set name.
        annotation_sets = [{
            'name': f'INVALID_annotator{j + 1}',
            'dataset_name': config.dataset_name,
            'user_mail': 'INVALID',
            'annotation_time': 0.0,
            'annotations': [{'image_path': f'{config.dataset_name}/{file}',
                             'class_label': names[votes[i, j]],
                             'created_at': '01-01-2022-00-00-00'} for i, file in enumerate(files)],
        } for j in range(config.annotators)]
        with open(os.path.join(tmp, 'annotations.json'), 'w', encoding='utf-8') as f:
            json.dump(annotation_sets, f)
        with open(os.path.join(tmp, 'truth.csv'), 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['image_path', 'class_a', 'class_b', 'alpha'] + names)
            for i, file in enumerate(files):
                soft = np.zeros(config.num_classes)
                soft[class_a[i]] += 1 - alpha[i]
                soft[class_b[i]] += alpha[i]
                writer.writerow([file, names[class_a[i]], names[class_b[i]], f'{alpha[i]:.6f}']
                                + [f'{v:.6f}' for v in soft])
        # The output folder is left out, so the same seed gives the same bytes anywhere.
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != 'out'}
        with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
            f.write('Synthetic ambiguous dataset written by scripts/make_synthetic.py with\n'
                    f'{json.dumps(settings, sort_keys=True)}\n'
                    'truth.csv holds the true soft label of every image.\n')
    return target


def define_flags():
    """Defined only when run as a script, so importing this module (tests) adds no flags."""
    flags.DEFINE_string('out', 'data/raw', 'Folder to write <out>/<name>/ into.')
    flags.DEFINE_string('name', 'Synthetic', 'Dataset folder name.')
    flags.DEFINE_string('dataset_name', SyntheticConfig.dataset_name, 'Dataset name inside '
                        'annotations.json (the name DCIC knows it by).')
    flags.DEFINE_integer('num_images', 2000, 'Number of images (spread evenly over 5 folds).')
    flags.DEFINE_integer('num_classes', 4, 'Number of classes.')
    flags.DEFINE_integer('image_size', 32, 'Image width and height in pixels.')
    flags.DEFINE_integer('annotators', 5, 'Simulated annotators; each labels every image once.')
    flags.DEFINE_float('ambiguous_fraction', 0.4, 'Share of images that blend two classes.')
    flags.DEFINE_float('noise', SyntheticConfig.noise, 'Std of the Gaussian pixel noise (pixels in '
                       '[0, 1]).')
    flags.DEFINE_integer('seed', 0, 'Random seed; the same seed gives identical files.')


def main(argv):
    if len(argv) > 1:
        raise DC3Error(f'unexpected arguments {argv[1:]!r}; all options are --flags')
    f = flags.FLAGS
    try:
        path = write_dataset(SyntheticConfig(
            out=f.out, name=f.name, dataset_name=f.dataset_name, num_images=f.num_images,
            num_classes=f.num_classes, image_size=f.image_size, annotators=f.annotators,
            ambiguous_fraction=f.ambiguous_fraction, noise=f.noise, seed=f.seed))
    except OSError as e:
        # A full disk or a file-size limit: atomic_path has already removed the partial copy.
        raise DC3Error(f'writing {os.path.join(f.out, f.name)} failed ({e.strerror or e}); '
                       'nothing was changed there; check the free disk space and '
                       'permissions') from None
    print(f'wrote {path}')


if __name__ == '__main__':
    define_flags()
    app.run(lambda argv: io_utils.run_cli(main, argv))

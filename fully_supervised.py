"""Supervised-only baseline: cross-entropy on the labeled images, no unlabeled data.

With DC3 the labeled cross-entropy plays the role of the SSL term and is scaled by 1 - p_a.
"""
from absl import app

import cli
from libml import train


class FullySupervised(train.SSLMethod):
    unlabeled_views = 0

    def method_losses(self, batch, outputs, progress):
        return train.LossTerms(labeled_xe=self.labeled_cross_entropy(batch, outputs))


def main(argv):
    del argv
    cli.run(FullySupervised)


if __name__ == '__main__':
    app.run(main)

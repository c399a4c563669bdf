"""Does the ambiguity head find the ambiguous images? Compares p_a with the known truth.

Prints the AUROC of p_a against the truth, the same AUROC for the classifier's own uncertainty
1 - max p_n as a reference, and per predicted class the mean p_a next to the class's truly
ambiguous share and precision (a head that splits by class instead of by ambiguity shows mean p_a
near 0 and 1 here, unrelated to the ambiguous share). The truth is "is a blend of two classes"
from the synthetic data's truth.csv when --truth is given, else "the annotators disagree" (the
image's soft label has no class at 1), which works for any multi-annotator dataset.

    python -m bench.ambiguity_check --run_dir experiments/demo/synthetic.1@-1-10/MeanTeacher_co4_... \
        --truth data/raw/Synthetic/truth.csv
    python -m bench.ambiguity_check --run_dir experiments/cifar10n/cifar10n.1@-1-10/MeanTeacher_co4_...
"""
import os

from absl import app, flags

from bench import ambiguity_curves
from libml import io_utils, metrics, prediction_csv, run_files

flags.DEFINE_string('run_dir', None, 'Run folder (with reports/).', required=True)
flags.DEFINE_string('truth', None, 'truth.csv of the synthetic data (default: the annotators '
                    'disagree, from the soft labels).')
flags.DEFINE_string('split', 'val', 'Split whose predictions to check.')
FLAGS = flags.FLAGS


def main(_):
    report = run_files.find_report(FLAGS.run_dir)
    pred = prediction_csv.read_predictions(os.path.join(report, f'{FLAGS.split}.csv'))
    truth = ambiguity_curves.read_truth(FLAGS.truth) if FLAGS.truth else None
    blended = ambiguity_curves.is_ambiguous(pred, truth)
    kind = 'blends' if FLAGS.truth else 'ambiguous (annotators disagree)'
    print(f'report {report}: {len(blended)} images, {blended.mean():.1%} {kind}')
    if pred['ambiguity'] is not None:
        print(f'AUROC p_a vs truth:          {metrics.auroc(pred["ambiguity"], blended):.3f}')
        per_class = ambiguity_curves.per_predicted_class(pred, blended)
        print(f'per predicted class (images, mean p_a, share {kind.split()[0]}, precision):')
        for c, row in per_class.iterrows():
            print(f'  {c}: {row["images"]:5.0f}  {row["mean_p_a"]:.2f}  {row["ambiguous"]:.2f}  '
                  f'{row["precision"]:.2f}')
        print(f'Spearman rho of mean p_a vs ambiguous share over the classes: '
              f'{per_class["mean_p_a"].rank().corr(per_class["ambiguous"].rank()):+.2f}')
    top = pred['class_probs'].max(axis=1)
    print(f'AUROC 1 - max p_n vs truth:  {metrics.auroc(1 - top, blended):.3f}')
    return 0


if __name__ == '__main__':
    app.run(lambda argv: io_utils.run_cli(main, argv))

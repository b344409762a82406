"""`--retrain` for `patch` and `revive`: fit the new model (and with --baseline an unchanged
copy) under the same budget, and print what helped."""

from __future__ import annotations

from deadrelu.commands._common import INPUT_DATA, OUTPUT_FILE, data_options, fraction, number, positive_int


def add_retrain_flags(parser) -> None:
    """Adds the retraining flags (the command must already have the "data" parent flags)."""
    group = parser.add_argument_group("retraining (with --retrain)")
    group.add_argument("--retrain", action="store_true", help="fit the new model on --data/--labels and compare")
    group.add_argument("--epochs", type=positive_int, default=2, metavar="N", help="epochs (default 2)")
    group.add_argument(
        "--fit-batch-size", type=positive_int, default=32, metavar="N", help="training batch size (default 32)"
    )
    group.add_argument("--validation-data", type=INPUT_DATA, metavar="PATH", help="validation inputs (and 'y' labels)")
    group.add_argument(
        "--validation-labels", type=INPUT_DATA, metavar="PATH", help="validation labels, if not in the file"
    )
    group.add_argument(
        "--validation-split", type=fraction, metavar="F", help="hold out the last F of --data for validation"
    )
    group.add_argument("--loss", metavar="NAME", help="loss, when the file stores none (or to override it)")
    group.add_argument("--optimizer", metavar="NAME", help="optimizer class, e.g. adam (default: the file's)")
    group.add_argument("--lr", type=number, metavar="F", help="learning rate (default: the file's)")
    group.add_argument("--baseline", action="store_true", help="also retrain an unchanged copy, for a fair comparison")
    group.add_argument("--train-seed", type=int, default=0, metavar="N", help="seed of the training runs (default 0)")
    group.add_argument("--curves", type=OUTPUT_FILE, metavar="PATH", help="save the training curves (PNG)")


def check_retrain_flags(args) -> None:
    """Refuses `--retrain` without training or validation data before any work is done.

    Raises:
        UsageError: `--data` or the validation data is missing.
    """
    from deadrelu.errors import UsageError

    if not args.retrain:
        return
    if args.data is None:
        raise UsageError("--retrain needs training data: pass --data train.npz (with 'y', or --labels y.npy)")
    if not args.validation_data and args.validation_split is None:
        raise UsageError("--retrain needs validation data: pass --validation-data val.npz or --validation-split 0.2")


def retrain_from_args(args, output, source, variants: dict):
    """Retrains `variants` (label → model) as the flags say and returns the comparison.

    Args:
        args: Parsed flags of a command that called `add_retrain_flags`.
        output: The command's `Output`.
        source: The model as loaded (its compile configuration and, with --baseline, a copy).
        variants: Label → transformed model.

    Returns:
        A `deadrelu.fixes.retrain.Comparison`.
    """
    from deadrelu.fixes.model_utils import copy_model
    from deadrelu.fixes.retrain import retrain
    from deadrelu.views.plots import plot_curves

    check_retrain_flags(args)
    x, y, validation = training_data(args, source, "--retrain")
    if args.baseline:
        variants = {"as is (baseline)": copy_model(source), **variants}
    total = args.epochs * len(variants)
    with output.progress("retraining") as (on_start, on_batch):
        on_start(total)
        comparison = retrain(
            variants,
            source,
            x,
            y,
            epochs=args.epochs,
            batch_size=args.fit_batch_size,
            validation_data=validation,
            validation_split=args.validation_split,
            seed=args.train_seed,
            loss=args.loss,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            on_epoch=lambda name, epoch, logs: on_batch(1),
        )
    if args.curves:
        plot_curves(comparison, args.curves)
    return comparison


def training_data(args, source, command: str) -> tuple:
    """`(x, y, validation)` from --data/--labels and --validation-data/--validation-labels, as arrays.

    Args:
        args: Parsed flags (the "data" parent flags and --validation-data/--validation-labels).
        source: The model the data is adapted to (its input shapes and dtypes).
        command: How messages name what needs the data ("--retrain", "fix").

    Returns:
        Training inputs and labels, and `(x_val, y_val)` or None (then --validation-split holds out).

    Raises:
        UsageError: The training or validation data has no labels.
    """
    from deadrelu.data import load_data
    from deadrelu.errors import UsageError

    train = load_data(args.data, source, labels=args.labels, **data_options(args))
    if not train.has_labels:
        raise UsageError(f"{command} needs labels: pass --labels y.npy (or a data file with a 'y' array)")
    x, y = _materialize(train)
    validation = None
    if args.validation_data:
        held_out = load_data(
            args.validation_data, source, labels=args.validation_labels, **{**data_options(args), "samples": None}
        )
        if not held_out.has_labels:
            raise UsageError("--validation-data needs labels: a file with a 'y' array, or --validation-labels")
        validation = _materialize(held_out)
    return x, y, validation


def show_comparison(comparison, args, output) -> None:
    """Prints what retraining measured (after the command's own table: cause before effect)."""
    from deadrelu.views.terminal import comparison_table

    output.out.print(comparison_table(comparison))
    for line in comparison.verdicts():  # computed: better / no better / worse than the baseline, by how much
        output.out.print(line, style="bold")
    if args.curves:
        output.note(f"wrote training curves {args.curves}", style="dim")


def _materialize(data) -> tuple:
    """All batches joined: arrays, or lists/dicts of them for several inputs or outputs."""
    import keras
    import numpy as np

    xs, ys = zip(*data.batches(4096, labels=True))
    join = lambda parts: keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *parts)  # noqa: E731
    return join(xs), join(ys)

"""The errors training, checkpoints and evaluation raise for the user (a message naming the problem)."""


class TrainingError(RuntimeError):
    """Training stopped with a message for the user (NaN loss, bad checkpoint)."""


class CheckpointError(TrainingError):
    """A checkpoint file is missing, unreadable, not a vitpe training checkpoint, or holds pickled objects.

    A ``TrainingError``, so code that caught ``TrainingError`` around a load keeps working."""


class DataError(ValueError):
    """A data file or record is bad (missing file, box outside its image, class beyond num_classes, ...); the
    message names the file and the record."""


def exit_code(run, *args, **kwargs) -> int:
    """The command lines' convention: ``run(*args, **kwargs)``; a ``TrainingError`` prints its message and gives
    exit code 2, else 0."""
    try:
        run(*args, **kwargs)
    except TrainingError as e:
        print(f"error: {e}", flush=True)
        return 2
    return 0

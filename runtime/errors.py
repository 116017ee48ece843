"""The one exception type every layer raises for bad input; CLIs turn it into a one-line message."""


class ChsError(ValueError):
    """A problem with the user's input (file, image, box, model, option) that has a one-line explanation."""

"""The one exception type users see: a bad input, told in one line."""

__all__ = ["UserError"]


class UserError(ValueError):
  """A problem with what the user asked for, with what to do about it.

  The command line prints ``str(error)`` on one line and exits with status 2;
  library callers get an ordinary ``ValueError`` subclass.

  Example:
    >>> raise UserError("unknown op 'conv_9x9'; known ops: none, max_pool_3x3, ...")
  """

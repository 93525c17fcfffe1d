"""The one exception type datacull raises for bad input or an unusable environment."""


class DatacullError(Exception):
    """A problem the user can fix; the CLI prints its message as one line and exits with status 2."""


def setting_number(value, key: str, kind: type = float):
    """`value` of config setting `key` as `kind` (int or float), or one DatacullError naming the key."""
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise DatacullError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None

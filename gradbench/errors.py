"""The one exception for bad user input: the CLI prints it without a traceback."""


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key and what is allowed."""


def require(ok: bool, key: str, rule: str, got: object) -> None:
    """Raise `ConfigError("<key> <rule>, got <got>")` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} {rule}, got {got!r}")


def choose(key: str, value: str, allowed: dict):
    """Look `value` up in `allowed`, or fail naming `key` and the allowed values."""
    require(value in allowed, key, f"must be one of {' | '.join(allowed)}", value)
    return allowed[value]

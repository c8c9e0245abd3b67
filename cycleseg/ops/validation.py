"""Value checks at the public boundary of the fused ops (eager mode only; each is a host sync)."""
_enabled = True


def set_validation(enabled: bool) -> None:
    """Turn the value checks off, e.g. in a training loop whose data was validated when loaded."""
    global _enabled
    _enabled = bool(enabled)


def validation_enabled() -> bool:
    return _enabled

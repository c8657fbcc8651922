"""App settings, read the way Azure Functions exposes them: as environment variables.

Names follow XBoot.Server (`Location`, `CertificateFile`, ...) so an existing
local.settings.json or App Settings blade carries over unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from xboot.errors import ConfigurationError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Environment(Mapping[str, str]):
    """`os.environ`, looked up without raising KeyError for every setting that is not set (most are not):
    a request reads a few dozen names, and `os.environ.get` pays an exception per miss."""

    _data: dict[bytes, bytes] | None = getattr(os.environ, "_data", None) if os.name == "posix" else None

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        if self._data is None:
            return os.environ.get(name, default)
        value = self._data.get(name.encode("utf-8", "surrogateescape"))
        return default if value is None else os.fsdecode(value)

    def __getitem__(self, name: str) -> str:
        return os.environ[name]

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


_ENVIRONMENT = _Environment()


class Settings:
    """A read-only view of the app settings with typed accessors that name the setting at fault."""

    def __init__(self, values: Mapping[str, str]) -> None:
        # A view, not a copy: a request reads a few dozen names, each once (os.environ decodes per lookup).
        self._values = values
        self._seen: dict[str, str | None] = {}

    @classmethod
    def from_environ(cls) -> Settings:
        """The settings for one request: made per request, so changed settings apply to the next one."""
        return cls(_ENVIRONMENT)

    def _lookup(self, name: str) -> str | None:
        try:
            return self._seen[name]
        except KeyError:
            value = self._seen[name] = self._values.get(name)
            return value

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._lookup(name)
        if value is None or not value.strip():
            return default
        return value.strip()

    def raw(self, name: str) -> str | None:
        """The value without trimming: PEM text and passwords are taken as written."""
        value = self._lookup(name)
        return value if value else None

    def require(self, name: str, purpose: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigurationError(f"setting {name} is required {purpose}")
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigurationError(f"setting {name} must be a whole number") from None
        if not minimum <= number <= maximum:
            raise ConfigurationError(f"setting {name} must be between {minimum} and {maximum}")
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigurationError(f"setting {name} must be true or false")

    def snapshot(self, names: tuple[str, ...]) -> tuple[str | None, ...]:
        """The raw values of `names`: a cache key that changes whenever any of them changes."""
        return tuple(self._lookup(name) for name in names)

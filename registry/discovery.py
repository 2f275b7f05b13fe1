"""Entry-point discovery for the ``tuneforge`` group (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

ENTRY_POINT_GROUP = "tuneforge"


@dataclass(frozen=True)
class PluginSource:
    """One entry point that declares a plugin."""

    name: str
    value: str
    distribution: str
    version: str

    def load(self) -> object:
        ep = metadata.EntryPoint(name=self.name, value=self.value, group=ENTRY_POINT_GROUP)
        return ep.load()


def discover(group: str = ENTRY_POINT_GROUP) -> list[PluginSource]:
    """Every entry point in ``group``, sorted by name, without importing any of them."""
    found: dict[tuple[str, str], PluginSource] = {}
    for dist in metadata.distributions():
        eps = [ep for ep in dist.entry_points if ep.group == group]
        if not eps:
            continue
        dist_name = dist.metadata["Name"] or "?"
        for ep in eps:
            # The same distribution can be visible twice (editable + site dir): keep one.
            found.setdefault(
                (ep.name, ep.value), PluginSource(ep.name, ep.value, dist_name, dist.version)
            )
    return sorted(found.values(), key=lambda s: (s.name, s.distribution))

"""A run dir is data, never code: what gradbench may instantiate from a config it reads back.

Hydra's `instantiate` calls whatever a `_target_` names, at any depth. A config read from a run
dir (summary.json, .hydra/, checkpoint.pt, model.pt) is checked node by node first: every
`_target_` must be one that gradbench's own config tree (conf/) or the user's `--config-dir`
names, else the command refuses with one line naming the file and the key, before it calls or
writes anything. Overrides read back (`resume=RUN_DIR`) are checked before Hydra sees them:
no Hydra setting (Hydra instantiates its own callbacks and launchers), no resolver call
(`${oc.create:...}` builds nodes), no group option outside the config dirs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml

from gradbench.errors import UnsafeConfig

RESOLVER = re.compile(r"\$\{\s*([\w.]+)\s*:")  # `${name:...}`: a resolver call, not a plain `${a.b}`
# resolvers that only return a string or a value already in the config; oc.create, oc.decode and
# the like build nodes from text, so a `_target_` could be hidden in a string
SAFE_RESOLVERS = ("oc.env", "oc.select", "now", "forward_gradient_sphere_lr")


def packaged() -> Path:
    """gradbench's own conf/, the one the CLI composes (gradbench.paths.config_dir)."""
    from gradbench.paths import CONF

    return Path(CONF)


def config_dirs(extra: str | Path | None = None) -> tuple[Path, ...]:
    """The trusted config dirs: the packaged one, and the user's `--config-dir` if given."""
    return (packaged(), *([Path(extra).expanduser().resolve()] if extra else []))


@lru_cache(maxsize=8)
def _targets(dirs: tuple[Path, ...]) -> frozenset[str]:
    found: set[str] = set()
    for root in dirs:
        for path in sorted(root.rglob("*.yaml")):
            try:
                # gradbench's own files (trusted): libyaml's safe loader where installed, 10x faster
                documents = list(yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
            except (OSError, yaml.YAMLError):
                continue  # a file Hydra could not compose either: it names nothing
            for document in documents:
                found.update(_named(document))
    return frozenset(found)


def _named(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for value in node.values() for t in _named(value)]
    if isinstance(node, list):
        return [t for value in node for t in _named(value)]
    return []


def allowed(config_dir: str | Path | None = None) -> frozenset[str]:
    """Every `_target_` value the trusted config dirs define, at any depth."""
    return _targets(config_dirs(config_dir))


def check(config, source: str, config_dir: str | Path | None = None, prefix: str = "") -> None:
    """Refuse (UnsafeConfig) a config read from `source` if any node names a `_target_` outside
    the allow-list, or holds a resolver call that would build nodes when it is resolved."""
    allow = allowed(config_dir)
    for key, value in _walk(config, prefix):
        if key == "_target_" or key.endswith("._target_"):
            if not isinstance(value, str) or value not in allow:
                raise UnsafeConfig(f"{source}: {key} = {value!r} is not a target of gradbench's configs: a run dir "
                                   f"is data, nothing in it is called (a class of your own: --config-dir DIR)")
        elif isinstance(value, str) and any(r not in SAFE_RESOLVERS for r in RESOLVER.findall(value)):
            raise UnsafeConfig(f"{source}: {key} = {value!r} is a resolver call: a run dir is data, nothing in it "
                               f"is resolved into objects")


def _walk(node, prefix: str):
    """(dotted key, leaf value) for every leaf, and each `_target_` with its value."""
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, (dict, list)):
                yield from _walk(value, f"{name}.")
                if isinstance(value, dict) and not value:
                    yield name, value
            else:
                yield name, value
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, (dict, list)):
                yield from _walk(value, f"{prefix}{i}.")
            else:
                yield f"{prefix}{i}", value
    elif prefix:
        yield prefix.rstrip("."), node


def check_overrides(lines: list[str], source: str, config_dir: str | Path | None = None) -> None:
    """Refuse stored overrides (a run's .hydra/overrides.yaml) that could make anything be
    called: a Hydra setting, a `_target_` or resolver call in a value (check), a group option
    that is not a file of the trusted config dirs (`model=../../elsewhere`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    dirs = config_dirs(config_dir)
    for line in lines:
        try:
            override = parser.parse_override(line)
        except Exception as e:  # Hydra's grammar errors carry the whole parse tree: its first line
            raise UnsafeConfig(f"{source}: {line!r} is not a Hydra override ({str(e).splitlines()[0]})") from None
        key = override.key_or_group
        if override.is_hydra_override() or key == "hydra":
            raise UnsafeConfig(f"{source}: {key} is a Hydra setting: a run's overrides hold none")
        if override.is_delete():
            continue
        value = override.value()
        check({key: value}, source, config_dir)
        groups = [root / key for root in dirs if (root / key).is_dir()]
        if groups:
            for option in value if isinstance(value, list) else [value]:
                if option is not None and not (isinstance(option, str) and _is_option(groups, option)):
                    raise UnsafeConfig(f"{source}: {key}={option!r} is not an option of the config group {key!r}")


def _is_option(groups: list[Path], option: str) -> bool:
    for group in groups:
        path = (group / f"{option}.yaml").resolve()
        if path.is_file() and path.is_relative_to(group.resolve()):
            return True
    return False


def job_config_dir() -> str | None:
    """Inside a Hydra job: the user's `--config-dir`, as Hydra recorded its source."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sources = HydraConfig.get().runtime.config_sources
    return next((s.path for s in sources if s.provider == "command-line" and s.schema == "file"), None)

"""The package re-exports every public name of its public modules."""

from __future__ import annotations

import importlib
import pkgutil

import theia_frames

PRIVATE_MODULES = {"theia_frames.__main__", "theia_frames.pytest_plugin"}


def public_modules():
    for info in pkgutil.walk_packages(theia_frames.__path__, "theia_frames."):
        name = info.name
        if name in PRIVATE_MODULES or name.rsplit(".", 1)[-1].startswith("_") or ".cli" in name:
            continue
        yield importlib.import_module(name)


def test_every_public_module_has_all():
    for module in public_modules():
        assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"


def test_top_level_exports_resolve():
    for name in theia_frames.__all__:
        assert getattr(theia_frames, name) is not None
    assert set(theia_frames.__all__) <= set(dir(theia_frames))


def test_core_modules_are_reexported():
    # modules whose every public name belongs at the top level
    for modname in ("event", "codec", "filter", "exceptions"):
        module = importlib.import_module(f"theia_frames.{modname}")
        missing = [
            n for n in module.__all__
            if n not in theia_frames.__all__ and not n.isupper() and n not in CORE_INTERNAL
        ]
        assert not missing, f"theia_frames does not re-export {modname}: {missing}"


# names of the core kept in their module on purpose (wire-level details)
CORE_INTERNAL = {"Ok", "ErrorMessage", "Message", "is_ok", "error_text", "excerpt", "Order", "Engine", "ENGINES"}


def test_package_ships_py_typed():
    from importlib.resources import files

    assert files("theia_frames").joinpath("py.typed").is_file()
